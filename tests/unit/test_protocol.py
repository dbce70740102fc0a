"""vend's HTTP/1.1 protocol at the byte level, on an in-memory transport (no socket).

Pipelines mixing every kind of answer, followed by each refusal, sent at once and byte
by byte; flow control with a slow reader; disconnects; RFC 9112 framing cases; the
timers; graceful shutdown. The same protocol over a real socket through uvicorn is in
tests/live/test_protocol.py.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from app.server.answers import AnswerQueue
from app.server.clock import DeadlineTimer
from app.server.connection import VendProtocol
from app.server.flow import FlowControl
from app.server.limits import MAX_PIPELINED_REQUESTS, ProtocolLimits
from tests.unit.memory_transport import (
    BIG_BYTES,
    PAGE,
    SMALL,
    Connection,
    Server,
    make_tree,
    parse_responses,
    run_with_server,
)


def run(test: Callable[[Server], Awaitable[None]], tmp_path: Path, **settings: Any) -> None:
    """Run ``test`` with a fresh server on fresh mounts, on a new event loop."""
    run_with_server(test, make_tree(tmp_path), **settings)


def get(target: bytes, *extra: bytes, method: bytes = b"GET") -> bytes:
    """One request head."""
    return method + b" " + target + b" HTTP/1.1\r\nHost: test\r\n" + b"".join(extra) + b"\r\n"


async def warm(server: Server, *targets: bytes) -> None:
    """Answer each target once, so that its small file is in the name cache."""
    conn = server.connect()
    await conn.send(b"".join(get(t) for t in targets))
    await conn.wait_responses(["GET"] * len(targets))


async def etag_of(server: Server, target: bytes) -> bytes:
    """The ETag of a file, from a GET."""
    conn = server.connect()
    await conn.send(get(target))
    (response,) = await conn.wait_responses(["GET"])
    etag = response.header(b"etag")
    assert etag is not None
    return etag


REFUSALS = {
    400: b"GET /a b HTTP/1.1\r\nHost: test\r\n\r\n",  # raw space in the target
    # RFC 9110 section 9.1: a method vend does not know; RFC 9112 section 6.1.
    501: b"BREW /pot HTTP/1.1\r\nHost: test\r\n\r\n",
    414: b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: test\r\n\r\n",
    431: b"GET /small.txt HTTP/1.1\r\nHost: test\r\n" + b"X-A: b\r\n" * 101 + b"\r\n",
    408: b"GET /small.txt HTTP/1.1\r\nHost: te",
}


@pytest.mark.parametrize("byte_by_byte", [False, True], ids=["one-write", "byte-by-byte"])
@pytest.mark.parametrize("refusal", sorted(REFUSALS))
def test_pipeline_of_every_answer_kind_then_a_refusal(
    tmp_path: Path, refusal: int, byte_by_byte: bool
) -> None:
    """Every kind of answer, pipelined, then a refusal: all whole, in order, refusal last."""

    async def test(server: Server) -> None:
        await warm(server, b"/small.txt")
        etag = await etag_of(server, b"/small.txt")
        requests = [
            ("GET", get(b"/small.txt"), 200, SMALL),  # hot path
            ("GET", get(b"/big.bin"), 200, None),  # read in threads
            ("GET", get(b"/nope.txt"), 404, b"Not Found\n"),
            ("HEAD", get(b"/small.txt", method=b"HEAD"), 200, b""),  # hot path
            ("GET", get(b"/small.txt", b"If-None-Match: " + etag + b"\r\n"), 304, b""),
            ("GET", get(b"/page.html", b"Range: bytes=0-5\r\n"), 206, PAGE[:6]),
            ("GET", get(b"/page.html", b"Range: bytes=9999-\r\n"), 416, None),
            ("POST", get(b"/small.txt", method=b"POST"), 405, None),
            ("GET", get(b"/a%2fb.txt"), 400, b"Bad Request\n"),
            ("GET", get(b"/.well-known/vend/health"), 200, None),
            ("GET", get(b"/page.html"), 200, PAGE),
        ]
        conn = server.connect()
        data = b"".join(r[1] for r in requests) + REFUSALS[refusal]
        await conn.send(data, byte_by_byte=byte_by_byte)
        await conn.wait_closed(timeout_s=20)
        methods = [r[0] for r in requests] + ["GET"]
        answers = parse_responses(bytes(conn.transport.out), methods)
        assert [a.status for a in answers] == [r[2] for r in requests] + [refusal]
        for (_, _, _, body), answer in zip(requests, answers, strict=False):
            if body is not None:
                assert answer.body == body
        assert len(answers[1].body) == BIG_BYTES
        assert answers[-1].header(b"connection") == b"close"
        assert conn.transport.eof or conn.transport.closed

    run(test, tmp_path)


@pytest.mark.parametrize("first", [b"/small.txt", b"/nope.txt", b"HEAD"])
def test_answer_before_an_over_long_target_is_not_lost(tmp_path: Path, first: bytes) -> None:
    """The bug on main: one packet with a small file (or 404, or HEAD) then a 414 gave only the 414."""

    async def test(server: Server) -> None:
        conn = server.connect()
        head = get(b"/small.txt", method=b"HEAD") if first == b"HEAD" else get(first)
        await conn.send(head + REFUSALS[414])
        await conn.wait_closed()
        method = "HEAD" if first == b"HEAD" else "GET"
        answers = parse_responses(bytes(conn.transport.out), [method, "GET"])
        assert [a.status for a in answers] == [404 if first == b"/nope.txt" else 200, 414]

    run(test, tmp_path)


def test_slow_reader_pauses_reading_and_gets_every_answer_in_order(tmp_path: Path) -> None:
    """A client that reads slowly: reading stops while the writer is behind; all answers arrive whole."""

    async def test(server: Server) -> None:
        await warm(server, b"/small.txt", b"/page.html")
        conn = server.connect(high_water=8 * 1024)
        targets = [b"/small.txt", b"/big.bin", b"/page.html", b"/nope.txt"] * 10
        send = asyncio.create_task(conn.send(b"".join(get(t) for t in targets)))
        paused_seen = False
        deadline = time.monotonic() + 60  # a liveness bound: about 1 s on a quiet machine
        while len(parse_safe(conn, len(targets))) < len(targets):
            assert time.monotonic() < deadline, "the slow reader did not get every answer"
            await asyncio.sleep(0.002)
            if conn.transport.write_paused:
                paused_seen = paused_seen or not conn.transport.reading
                conn.transport.drain_client()
        await send
        answers = parse_responses(bytes(conn.transport.out), ["GET"] * len(targets))
        assert [a.status for a in answers] == [200, 200, 200, 404] * 10
        assert [len(a.body) for a in answers[:4]] == [len(SMALL), BIG_BYTES, len(PAGE), 10]
        assert paused_seen

    run(test, tmp_path)


async def wait_for(predicate: Callable[[], Any], what: str, timeout_s: float = 30.0) -> None:
    """Let the loop run until ``predicate()`` is true; fail naming ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"not within {timeout_s} s: {what}"
        await asyncio.sleep(0.001)


def parse_safe(conn: Connection, count: int) -> list[Any]:
    """The whole responses written so far (none while one is incomplete)."""
    try:
        return parse_responses(bytes(conn.transport.out), ["GET"] * count)
    except AssertionError:
        return []


def test_at_most_sixteen_requests_are_parsed_ahead(tmp_path: Path) -> None:
    """Forty pipelined requests behind a slow one: reading stops with 16 waiting; all answered."""

    async def test(server: Server) -> None:
        conn = server.connect(high_water=1024)
        count = 40
        await conn.send(b"".join(get(b"/big.bin") for _ in range(count)), timeout_s=0.2)
        await wait_for(lambda: conn.transport.write_paused, "the first answer is behind")
        assert len(conn.protocol._queue) <= MAX_PIPELINED_REQUESTS
        assert not conn.transport.reading
        deadline = time.monotonic() + 60  # a liveness bound: about 1 s on a quiet machine
        while len(parse_safe(conn, count)) < count:
            assert time.monotonic() < deadline, "not every pipelined request was answered"
            conn.transport.drain_client()
            await asyncio.sleep(0.001)
        answers = parse_responses(bytes(conn.transport.out), ["GET"] * count)
        assert all(a.status == 200 and len(a.body) == BIG_BYTES for a in answers)

    run(test, tmp_path)


def test_disconnect_mid_body_disturbs_no_other_connection(tmp_path: Path) -> None:
    """One client goes away in the middle of a big body; another connection is answered whole."""

    async def test(server: Server) -> None:
        gone = server.connect(high_water=4096)
        other = server.connect()
        await gone.send(get(b"/big.bin") + get(b"/page.html"))
        await wait_for(lambda: gone.transport.write_paused, "the big body is under way")
        gone.transport.close()  # the client resets mid-body
        await other.send(get(b"/big.bin") + get(b"/page.html"))
        answers = await other.wait_responses(["GET", "GET"])
        assert [len(a.body) for a in answers] == [BIG_BYTES, len(PAGE)]
        await wait_for(lambda: gone.protocol.disconnected, "the reset connection let go")

    run(test, tmp_path)


FRAMING = [
    # (name, request bytes, expected status, connection closes afterwards)
    ("no Host in HTTP/1.1", b"GET /small.txt HTTP/1.1\r\n\r\n", 400, True),
    ("two Host fields", b"GET /small.txt HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400, True),
    ("invalid Host", b"GET /small.txt HTTP/1.1\r\nHost: a b/c\r\n\r\n", 400, True),
    (
        "absolute-form",
        b"GET http://other.example/small.txt HTTP/1.1\r\nHost: x\r\n\r\n",
        200,
        False,
    ),
    ("asterisk-form", b"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n", 400, True),
    ("authority-form GET", b"GET example.org:80 HTTP/1.1\r\nHost: x\r\n\r\n", 400, True),
    ("CONNECT", b"CONNECT example.org:443 HTTP/1.1\r\nHost: example.org:443\r\n\r\n", 405, True),
    (
        "Content-Length and Transfer-Encoding",
        b"GET /small.txt HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        400,
        True,
    ),
    (
        "repeated Content-Length",
        b"GET /small.txt HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\na",
        400,
        True,
    ),
    (
        "invalid Content-Length",
        b"GET /small.txt HTTP/1.1\r\nHost: x\r\nContent-Length: 1a\r\n\r\na",
        400,
        True,
    ),
    ("obs-fold", b"GET /small.txt HTTP/1.1\r\nHost: x\r\nX-A: a\r\n b\r\n\r\n", 400, True),
    ("bare LF", b"GET /small.txt HTTP/1.1\nHost: x\n\n", 400, True),
    ("HTTP/2.0 request line", b"GET /small.txt HTTP/2.0\r\nHost: x\r\n\r\n", 505, True),
    (
        "GET with a small body",
        b"GET /small.txt HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello",
        200,
        False,
    ),
    (
        "GET with a chunked body",
        b"GET /small.txt HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        200,
        False,
    ),
    (
        "GET with a body over 64 KiB",
        b"GET /small.txt HTTP/1.1\r\nHost: x\r\nContent-Length: 70000\r\n\r\n",
        413,
        True,
    ),
    ("HTTP/1.0", b"GET /small.txt HTTP/1.0\r\n\r\n", 200, True),
    (
        "HTTP/1.0 keep-alive",
        b"GET /small.txt HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
        200,
        False,
    ),
    (
        "Connection: close",
        b"GET /small.txt HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        200,
        True,
    ),
]


@pytest.mark.parametrize("hot", [True, False], ids=["hot", "asgi"])
@pytest.mark.parametrize("case", FRAMING, ids=[c[0] for c in FRAMING])
def test_framing_cases_of_the_readme_table(
    tmp_path: Path, case: tuple[str, bytes, int, bool], hot: bool
) -> None:
    """Each framing case of docs/http.md's table gets its answer, and closes or not as stated."""
    _, request, status, closes = case

    async def test(server: Server) -> None:
        await warm(server, b"/small.txt")
        conn = server.connect(hot=hot)
        await conn.send(request)
        (answer,) = await conn.wait_responses(["GET"])
        assert answer.status == status
        if status == 200:
            assert answer.body == SMALL
        if closes:
            await conn.wait_closed()
            assert answer.header(b"connection") == b"close"
        else:
            await asyncio.sleep(0.05)
            assert not (conn.transport.closed or conn.transport.eof)
            if request.startswith(b"GET /small.txt HTTP/1.0"):
                assert answer.header(b"connection") == b"keep-alive"
            await conn.send(get(b"/page.html"))  # the connection is still usable
            answers = await conn.wait_responses(["GET", "GET"])
            assert answers[1].body == PAGE

    run(test, tmp_path)


def test_keep_alive_idle_connection_is_closed(tmp_path: Path) -> None:
    """A connection idle for keep_alive_s after an answer is closed without a response."""

    async def test(server: Server) -> None:
        conn = server.connect()
        await conn.send(get(b"/small.txt"))
        await conn.wait_responses(["GET"])
        written = len(conn.transport.out)
        await conn.wait_closed(timeout_s=server.limits.keep_alive_s * 10)
        assert len(conn.transport.out) == written
        # Not before keep_alive_s had passed since the answer's last byte (the loop's
        # clock is time.monotonic, as the transport's records).
        assert conn.transport.closed_at is not None and conn.transport.last_write_at is not None
        idle_s = conn.transport.closed_at - conn.transport.last_write_at
        assert idle_s >= server.limits.keep_alive_s - 0.001, idle_s

    run(test, tmp_path)


def test_silent_new_connection_is_closed_and_partial_head_gets_408(tmp_path: Path) -> None:
    """No byte within request_head_s: closed silently; part of a head: 408 then close."""

    async def test(server: Server) -> None:
        silent = server.connect()
        partial = server.connect()
        await partial.send(b"GET /small.txt HTTP/1.1\r\n")
        await silent.wait_closed(timeout_s=server.limits.request_head_s * 10)
        await partial.wait_closed(timeout_s=server.limits.request_head_s * 10)
        assert silent.transport.out == b""
        (answer,) = parse_responses(bytes(partial.transport.out), ["GET"])
        assert (answer.status, answer.reason) == (408, b"Request Timeout")

    run(test, tmp_path)


def test_client_that_reads_nothing_is_cut_off_after_send_s(tmp_path: Path) -> None:
    """A client that stops reading mid-body is aborted after timeouts.send_s."""

    async def test(server: Server) -> None:
        conn = server.connect(high_water=1024)
        await conn.send(get(b"/big.bin"))
        await conn.wait_closed(timeout_s=server.limits.send_s * 10)
        assert conn.transport.aborted

    run(test, tmp_path)


def test_graceful_shutdown_finishes_the_answer_in_flight(tmp_path: Path) -> None:
    """shutdown(): an idle connection closes at once; a busy one finishes its answer, then closes."""

    async def test(server: Server) -> None:
        idle = server.connect()
        busy = server.connect()
        await busy.send(get(b"/big.bin") + get(b"/page.html"))
        await asyncio.sleep(0)
        idle.protocol.shutdown()
        busy.protocol.shutdown()
        assert idle.transport.closed
        await busy.wait_closed()
        (answer,) = parse_responses(bytes(busy.transport.out), ["GET"])
        assert (answer.status, len(answer.body)) == (200, BIG_BYTES)

    run(test, tmp_path)


def test_draining_answers_say_connection_close_on_both_paths(tmp_path: Path) -> None:
    """While draining, a cached file's answer carries Connection: close and the connection closes."""

    async def test(server: Server) -> None:
        await warm(server, b"/small.txt")
        server.app.draining = True
        conn = server.connect()
        await conn.send(get(b"/small.txt") + get(b"/page.html"))
        await conn.wait_closed()
        (answer,) = parse_responses(bytes(conn.transport.out), ["GET"])
        assert (answer.status, answer.header(b"connection")) == (200, b"close")

    run(test, tmp_path)


def test_refusals_are_logged_and_counted(tmp_path: Path) -> None:
    """A 414 and a 431 appear in the access log (request line or '-') and in vend_requests_total."""
    log = tmp_path / "access.log"

    async def test(server: Server) -> None:
        for request in (REFUSALS[414], REFUSALS[431]):
            conn = server.connect()
            await conn.send(request)
            await conn.wait_closed()
        metrics = server.app.metrics.render().decode()
        assert 'vend_requests_total{status="414"} 1.0' in metrics
        assert 'vend_requests_total{status="431"} 1.0' in metrics
        server.app.access_log.close()
        lines = log.read_text().splitlines()
        assert any('"-" 414 13 ' in line for line in lines), lines
        assert any('"GET /small.txt HTTP/1.1" 431 ' in line for line in lines), lines

    run(test, tmp_path, access_log=str(log))


def test_reason_phrases_are_rfc_9110s(tmp_path: Path) -> None:
    """416 is 'Range Not Satisfiable' and 414 'URI Too Long' (RFC 9110 section 15)."""

    async def test(server: Server) -> None:
        conn = server.connect()
        await conn.send(get(b"/page.html", b"Range: bytes=9999-\r\n") + REFUSALS[414])
        await conn.wait_closed()
        answers = parse_responses(bytes(conn.transport.out), ["GET", "GET"])
        assert [(a.status, a.reason) for a in answers] == [
            (416, b"Range Not Satisfiable"),
            (414, b"URI Too Long"),
        ]

    run(test, tmp_path)


def test_limits_reach_the_protocol_through_its_factory(tmp_path: Path) -> None:
    """Each connection carries the limits it was made with, not class-wide values."""

    async def test(server: Server) -> None:
        conn = server.connect()
        assert conn.protocol.limits == server.limits
        assert conn.protocol.limits != ProtocolLimits()

    run(test, tmp_path)


def test_half_closed_client_gets_every_answer_then_the_close(tmp_path: Path) -> None:
    """Requests then EOF from the client: every answer is written, then the connection closes."""

    async def test(server: Server) -> None:
        conn = server.connect()
        await conn.send(get(b"/big.bin") + get(b"/page.html") + b"GET /sma")
        assert conn.protocol.eof_received() is True
        await conn.wait_closed()
        answers = parse_responses(bytes(conn.transport.out), ["GET", "GET"])
        assert [len(a.body) for a in answers] == [BIG_BYTES, len(PAGE)]

    run(test, tmp_path)


@pytest.mark.parametrize(
    ("mixin", "name"),
    [
        (AnswerQueue, "_emit"),
        (AnswerQueue, "_close"),
        (AnswerQueue, "refuse"),
        (FlowControl, "_pump"),
        (FlowControl, "_sync_reading"),
        (FlowControl, "queue_full"),
        (DeadlineTimer, "set_deadline"),
    ],
    ids=lambda x: getattr(x, "__name__", x),
)
def test_each_method_comes_from_the_mixin_that_has_it(mixin: type, name: str) -> None:
    """VendProtocol uses each mixin's own method, never a placeholder another mixin declares."""
    assert getattr(VendProtocol, name) is getattr(mixin, name)

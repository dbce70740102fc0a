"""vend's HTTP/1.1 protocol over a real socket, through ``vend serve`` (uvicorn, uvloop).

Pipelines mixing every answer kind (the hot path, sendfile, reads, errors, HEAD, 304,
206, 416, 405, 400, the operator's health) followed by each refusal, sent in one write
and byte by byte; a slow reader; a client resetting mid-body; the access log of both
paths with a trusted X-Forwarded-For. The same cases on an in-memory transport are in
tests/unit/test_protocol.py.
"""

from __future__ import annotations

import os
import signal
import socket
import struct
import time
from pathlib import Path
from typing import Any

import pytest

from tests.support import VendProcess, get_raw, parse_responses, read_hostile_paths

pytestmark = pytest.mark.live

SMALL = b"a small cached file\n"
PAGE = b"<html>page</html>\n"
BIG_BYTES = 2 * 1024 * 1024  # over cache.max_file_bytes: sent with sendfile
REQUEST_HEAD_S = 1.0


@pytest.fixture(scope="module")
def content(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One mount: a small file, a page and a 2 MiB file."""
    mount = tmp_path_factory.mktemp("protocol") / "m1"
    mount.mkdir()
    (mount / "small.txt").write_bytes(SMALL)
    (mount / "page.html").write_bytes(PAGE)
    (mount / "big.bin").write_bytes(bytes(range(256)) * (BIG_BYTES // 256))
    return mount


@pytest.fixture
def vend(start_vend: Any, content: Path, tmp_path: Path) -> VendProcess:
    """``vend serve`` over ``content``, 1 s request time, access log to a file."""
    settings = {
        "timeouts__request_head_s": REQUEST_HEAD_S,
        "access_log": str(tmp_path / "access.log"),
    }
    proc: VendProcess = start_vend([str(content)], settings)
    return proc


def _get(target: bytes, *extra: bytes, method: bytes = b"GET") -> bytes:
    return method + b" " + target + b" HTTP/1.1\r\nHost: t\r\n" + b"".join(extra) + b"\r\n"


def _read_until_closed(sock: socket.socket, timeout_s: float = 20.0) -> bytes:
    """Everything the server sends until it closes (bounded in time)."""
    deadline = time.monotonic() + timeout_s
    out = b""
    while time.monotonic() < deadline:
        sock.settimeout(max(0.05, deadline - time.monotonic()))
        try:
            chunk = sock.recv(1 << 20)
        except (TimeoutError, ConnectionResetError):
            break
        if not chunk:
            break
        out += chunk
    return out


REFUSALS = {
    400: b"GET /a b HTTP/1.1\r\nHost: t\r\n\r\n",  # raw space in the target
    # RFC 9110 section 9.1: a method vend does not know; RFC 9112 section 6.1.
    501: b"BREW /pot HTTP/1.1\r\nHost: t\r\n\r\n",
    414: b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: t\r\n\r\n",
    431: b"GET /small.txt HTTP/1.1\r\nHost: t\r\n" + b"X-A: b\r\n" * 101 + b"\r\n",
    408: b"GET /small.txt HTTP/1.1\r\nHost: t",
}


@pytest.mark.parametrize("byte_by_byte", [False, True], ids=["one-write", "byte-by-byte"])
@pytest.mark.parametrize("refusal", sorted(REFUSALS))
def test_pipeline_of_every_answer_kind_then_a_refusal(
    vend: VendProcess, refusal: int, byte_by_byte: bool
) -> None:
    """Every answer kind pipelined on a socket, then a refusal: all whole, in order, refusal last."""
    warm = get_raw(vend.port, b"/small.txt")
    etag = warm.headers["etag"].encode()
    requests = [
        ("GET", _get(b"/small.txt"), 200, SMALL),  # the hot path
        ("GET", _get(b"/big.bin"), 200, None),  # sendfile
        ("GET", _get(b"/nope.txt"), 404, b"Not Found\n"),
        ("HEAD", _get(b"/small.txt", method=b"HEAD"), 200, b""),
        ("GET", _get(b"/small.txt", b"If-None-Match: " + etag + b"\r\n"), 304, b""),
        ("GET", _get(b"/page.html", b"Range: bytes=1-4\r\n"), 206, PAGE[1:5]),
        ("GET", _get(b"/page.html", b"Range: bytes=999-\r\n"), 416, None),
        ("DELETE", _get(b"/small.txt", method=b"DELETE"), 405, None),
        ("GET", _get(b"/a%2fb.txt"), 400, b"Bad Request\n"),
        ("GET", _get(b"/.well-known/vend/health"), 200, None),
        ("GET", _get(b"/small.txt"), 200, SMALL),
    ]
    data = b"".join(r[1] for r in requests) + REFUSALS[refusal]
    with socket.create_connection(("127.0.0.1", vend.port), timeout=20) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if byte_by_byte:
            for i in range(len(data)):
                sock.sendall(data[i : i + 1])
        else:
            sock.sendall(data)
        raw = _read_until_closed(sock)
    answers = parse_responses(raw, [r[0] for r in requests] + ["GET"])
    assert [a.status for a in answers] == [r[2] for r in requests] + [refusal]
    for (_, _, _, body), answer in zip(requests, answers, strict=False):
        if body is not None:
            assert answer.body == body
    assert answers[1].body == bytes(range(256)) * (BIG_BYTES // 256)
    assert answers[-1].header(b"connection") == b"close"


def test_slow_reader_gets_every_big_answer_whole_and_in_order(vend: VendProcess) -> None:
    """Eight 2 MiB files and small ones pipelined, read slowly: every byte, in order."""
    targets = [b"/big.bin", b"/small.txt"] * 4
    data = b"".join(_get(t) for t in targets) + _get(b"/page.html", b"Connection: close\r\n")
    with socket.create_connection(("127.0.0.1", vend.port), timeout=20) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)
        sock.sendall(data)
        raw = b""
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            chunk = sock.recv(256 * 1024)
            if not chunk:
                break
            raw += chunk
            if len(raw) < 3 * BIG_BYTES:
                time.sleep(0.002)
    answers = parse_responses(raw, ["GET"] * (len(targets) + 1))
    assert [len(a.body) for a in answers] == [BIG_BYTES, len(SMALL)] * 4 + [len(PAGE)]
    assert all(a.status == 200 for a in answers)


def test_client_reset_mid_body_leaves_other_connections_alone(vend: VendProcess) -> None:
    """A client resets in the middle of a sendfile body; another is served whole meanwhile and after."""
    with (
        socket.create_connection(("127.0.0.1", vend.port), timeout=20) as gone,
        socket.create_connection(("127.0.0.1", vend.port), timeout=20) as other,
    ):
        gone.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)
        gone.sendall(_get(b"/big.bin") + _get(b"/small.txt"))
        other.sendall(_get(b"/big.bin") + _get(b"/small.txt", b"Connection: close\r\n"))
        assert gone.recv(4096).startswith(b"HTTP/1.1 200 OK")
        gone.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        gone.close()  # RST with most of the body unsent
        answers = parse_responses(_read_until_closed(other), ["GET", "GET"])
    assert [len(a.body) for a in answers] == [BIG_BYTES, len(SMALL)]
    after = get_raw(vend.port, b"/page.html")
    assert (after.status, after.body) == (200, PAGE)


def test_both_paths_log_the_trusted_forwarded_address(vend: VendProcess, tmp_path: Path) -> None:
    """The first request (ASGI path) and the second (hot path) log the same X-Forwarded-For client."""
    forwarded = b"X-Forwarded-For: 203.0.113.7\r\nUser-Agent: probe/1\r\n"
    first = get_raw(vend.port, b"/small.txt", extra=forwarded)
    second = get_raw(vend.port, b"/small.txt", extra=forwarded)
    assert (first.status, first.body) == (second.status, second.body) == (200, SMALL)
    log = tmp_path / "access.log"
    lines: list[str] = []
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        lines = [line for line in log.read_text().splitlines() if "small.txt" in line]
        if len(lines) >= 2:
            break
        time.sleep(0.05)
    assert len(lines) == 2, lines
    for line in lines:
        assert line.startswith("203.0.113.7 - - [")
        assert '"GET /small.txt HTTP/1.1" 200 20 "-" "probe/1" m1 ' in line


def test_graceful_shutdown_finishes_the_download_in_flight(vend: VendProcess) -> None:
    """SIGTERM during a slowly read 2 MiB download: the download completes, then vend exits."""
    idle = socket.create_connection(("127.0.0.1", vend.port), timeout=20)
    with socket.create_connection(("127.0.0.1", vend.port), timeout=20) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)
        sock.sendall(_get(b"/big.bin"))
        first = sock.recv(4096)
        assert first.startswith(b"HTTP/1.1 200 OK")
        os.killpg(vend.pid, signal.SIGTERM)
        assert idle.recv(1) == b""  # an idle connection is closed (recv waits for it)
        raw = first + _read_until_closed(sock, timeout_s=30)
    idle.close()
    (answer,) = parse_responses(raw, ["GET"])
    assert len(answer.body) == BIG_BYTES
    assert vend.proc is not None
    assert vend.proc.wait(30) in (0, -signal.SIGTERM)


def test_hostile_path_corpus_answers_alike_cold_and_hot(vend: VendProcess) -> None:
    """Each corpus row twice over a socket (the second may take the hot path): same answer but Date."""
    for row in read_hostile_paths():
        target = row["raw_path"].encode("utf-8")
        first = get_raw(vend.port, target)
        second = get_raw(vend.port, target)
        assert first.status < 500 and first.status in {200, 400, 404, 414, 431}, row["raw_path"][
            :80
        ]
        first.headers.pop("date", None)
        second.headers.pop("date", None)
        assert (first.status, first.headers, first.body) == (
            second.status,
            second.headers,
            second.body,
        ), row["raw_path"][:80]


def _read_head(sock: socket.socket) -> bytes:
    """What arrives on ``sock`` until a blank line ends a head, or the peer closes."""
    out = b""
    while b"\r\n\r\n" not in out:
        chunk = sock.recv(65536)
        if not chunk:
            break
        out += chunk
    return out


@pytest.mark.parametrize(
    ("request_bytes", "status", "allow"),
    [
        (b"BREW /small.txt HTTP/1.1\r\nHost: t\r\n\r\n", 501, None),
        (b"get /small.txt HTTP/1.1\r\nHost: t\r\n\r\n", 501, None),  # methods are case-sensitive
        (b"DELETE /small.txt HTTP/1.1\r\nHost: t\r\n\r\n", 405, "GET, HEAD"),
        (b"GET /small.txt HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip\r\n\r\n", 501, None),
        (
            b"GET /small.txt HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
            501,
            None,
        ),
        (b"GET /a b.txt HTTP/1.1\r\nHost: t\r\n\r\n", 400, None),  # raw space: README agrees
    ],
    ids=[
        "unknown-method",
        "lower-case-method",
        "known-not-allowed",
        "gzip",
        "gzip-chunked",
        "space",
    ],
)
def test_requests_vend_will_not_serve(
    vend: VendProcess, request_bytes: bytes, status: int, allow: str | None
) -> None:
    """RFC 9110 section 9.1 (501 unknown, 405 known with Allow), RFC 9112 section 6.1 (501
    for a transfer coding other than chunked), RFC 9112 section 3 (raw space: 400)."""
    with socket.create_connection(("127.0.0.1", vend.port), timeout=20) as sock:
        sock.sendall(request_bytes)
        out = _read_head(sock)
    (answer,) = parse_responses(out, ["GET"])
    assert answer.status == status
    assert answer.header(b"allow") == (None if allow is None else allow.encode())


def test_if_none_match_with_empty_elements_matches(vend: VendProcess) -> None:
    """RFC 9110 section 5.6.1: empty list elements are ignored, so the ETag still matches."""
    etag = get_raw(vend.port, b"/small.txt").headers["etag"].encode()
    for value in (b", " + etag + b", ,", b'"zz",,' + etag):
        answer = get_raw(vend.port, b"/small.txt", extra=b"If-None-Match: " + value + b"\r\n")
        assert answer.status == 304, value


def test_expect_100_continue_is_answered_at_once(vend: VendProcess) -> None:
    """RFC 9110 section 10.1.1: a request with ``Expect: 100-continue`` and a body gets
    ``100 Continue`` before it sends the body, then its final answer."""
    head = (
        b"POST /small.txt HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", vend.port), timeout=20) as sock:
        sock.sendall(head)
        interim = _read_head(sock)
        assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(b"hello")
        out = _read_head(sock)
    assert out.startswith(b"HTTP/1.1 405 ")

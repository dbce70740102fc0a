"""Request limits of ``vend serve`` reached directly (app.server.limits): head size, pipelining, head time.

Every test talks raw bytes to a real vend on 127.0.0.1, because ordinary clients never
send what these tests send. Requests omit ``Connection: close`` where the point is that
vend itself closes. ``timeouts.request_head_s`` is 1 s here so the timing tests stay short.
"""

from __future__ import annotations

import os
import select
import socket
import struct
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from app.server.limits import (
    LINGER_S,
    MAX_FIELD_BYTES,
    MAX_FIELDS,
    MAX_PIPELINED_REQUESTS,
    MAX_REQUEST_TARGET_BYTES,
)
from tests.support import VendProcess, get_raw, rss_bytes

pytestmark = pytest.mark.live

REQUEST_HEAD_S = 1.0
SLACK_S = 1.5  # scheduling on a loaded 2-core CI machine
MIB = 1024 * 1024
FILES = 20
BIG_BYTES = 32 * MIB  # more than loopback's socket buffers hold: stays in flight


@pytest.fixture(scope="module")
def content(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A mount with ``f0.txt`` ... ``f19.txt`` (distinct bodies), ``k1.bin`` and ``big.bin``."""
    mount = tmp_path_factory.mktemp("limits") / "m1"
    mount.mkdir()
    for i in range(FILES):
        (mount / f"f{i}.txt").write_bytes(_body(i))
    (mount / "k1.bin").write_bytes(os.urandom(1024))
    with open(mount / "big.bin", "wb") as handle:
        for _ in range(BIG_BYTES // MIB):
            handle.write(os.urandom(MIB))
    return mount


@pytest.fixture
def vend(start_vend: Any, content: Path) -> VendProcess:
    """``vend serve`` over ``content`` with a 1 s request head time."""
    proc: VendProcess = start_vend([str(content)], {"timeouts__request_head_s": REQUEST_HEAD_S})
    return proc


def _body(i: int) -> bytes:
    return f"file {i}: {'x' * i}\n".encode()


def _get(target: bytes, extra: bytes = b"") -> bytes:
    """One keep-alive GET request head (no Connection: close)."""
    return b"GET " + target + b" HTTP/1.1\r\nHost: legacy.example.org\r\n" + extra + b"\r\n"


Response = tuple[int, dict[str, str], bytes]


def _split_responses(raw: bytes) -> tuple[list[Response], bytes]:
    """Split pipelined responses by Content-Length: the complete ones, and what is left."""
    found = []
    while True:
        head, sep, rest = raw.partition(b"\r\n\r\n")
        if not sep:
            return found, raw
        lines = head.split(b"\r\n")
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            headers[name.strip().lower().decode()] = value.strip().decode()
        length = int(headers["content-length"])
        if len(rest) < length:
            return found, raw
        found.append((int(lines[0].split()[1]), headers, rest[:length]))
        raw = rest[length:]


def _responses(raw: bytes) -> list[Response]:
    """All the responses in ``raw``, which must end with a complete one."""
    found, left = _split_responses(raw)
    assert left == b"", f"an incomplete response: {left[:200]!r}"
    return found


def _read_responses(sock: socket.socket, count: int, timeout_s: float = 10) -> list[Response]:
    """Read until ``count`` complete responses have arrived; return them."""
    deadline = time.monotonic() + timeout_s
    raw = bytearray()
    while True:
        found, _ = _split_responses(bytes(raw))
        if len(found) >= count:
            return found[:count]
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        data = sock.recv(MIB)
        assert data, f"closed after {len(found)} of {count} responses"
        raw += data


def _ask(port: int, request: bytes) -> tuple[Response, bool]:
    """Send one request (keep-alive); return its response and whether vend then closed.

    A refusal's close follows at once (vend shuts its side down for writing); an open
    keep-alive connection stays open for ``timeouts.keep_alive_s`` (5 s), well past 1 s.
    """
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        (response,) = _read_responses(sock, 1)
        try:
            rest, _ = _read_until_closed(sock, timeout_s=1.0)
        except TimeoutError:
            return response, False
    assert rest == b"", "nothing may follow a refusal"
    return response, True


def _read_until_closed(sock: socket.socket, timeout_s: float) -> tuple[bytes, float]:
    """Read until EOF or reset; return the bytes and when the close came (monotonic s).

    Raises:
        TimeoutError: the server kept the connection open for ``timeout_s`` seconds.
    """
    deadline = time.monotonic() + timeout_s
    received = bytearray()
    while True:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            data = sock.recv(MIB)
        except TimeoutError:
            raise TimeoutError(
                f"still open after {timeout_s} s: {bytes(received[:200])!r}"
            ) from None
        except ConnectionResetError:
            data = b""
        if not data:
            return bytes(received), time.monotonic()
        received += data


def _assert_still_serves(proc: VendProcess) -> None:
    response = get_raw(proc.port, b"/f3.txt")
    assert (response.status, response.body) == (200, _body(3))


# Head size: 414 and 431, then close.


def test_request_target_over_limit_is_414_and_closed(vend: VendProcess) -> None:
    """A request-target one byte over 8190 gets 414 and a closed connection; 8190 is served."""
    prefix = b"/f1.txt?"  # the query string is ignored: the name stays valid
    at_limit = prefix + b"a" * (MAX_REQUEST_TARGET_BYTES - len(prefix))
    (status, _, body), closed = _ask(vend.port, _get(at_limit))
    assert (status, body, closed) == (200, _body(1), False)
    (status, headers, body), closed = _ask(vend.port, _get(at_limit + b"a"))
    assert (status, body, closed) == (414, b"URI Too Long\n", True)
    assert headers["connection"] == "close"
    _assert_still_serves(vend)


@pytest.mark.parametrize(
    ("fields", "status"),
    [
        pytest.param([b"X-F%d: v" % i for i in range(MAX_FIELDS - 1)], 200, id="100-fields"),
        pytest.param([b"X-F%d: v" % i for i in range(MAX_FIELDS)], 431, id="101-fields"),
        pytest.param([b"X-Big:" + b"a" * (MAX_FIELD_BYTES - 5)], 200, id="field-8190-bytes"),
        pytest.param([b"X-Big:" + b"a" * (MAX_FIELD_BYTES - 4)], 431, id="field-8191-bytes"),
        pytest.param([b"X-H%d: %s" % (i, b"b" * 6000) for i in range(10)], 200, id="head-60k"),
        pytest.param([b"X-H%d: %s" % (i, b"b" * 6000) for i in range(11)], 431, id="head-66k"),
    ],
)
def test_header_fields_limits(vend: VendProcess, fields: list[bytes], status: int) -> None:
    """Over 100 fields, a field over 8190 bytes or a head over 64 KiB: 431 and closed."""
    extra = b"".join(field + b"\r\n" for field in fields)  # with Host: one field more
    (got, headers, body), closed = _ask(vend.port, _get(b"/f2.txt", extra))
    if status == 431:
        assert (got, body, closed) == (431, b"Request Header Fields Too Large\n", True)
        assert headers["connection"] == "close"
    else:
        assert (got, body, closed) == (200, _body(2), False)
    _assert_still_serves(vend)


def test_150_mib_header_line_is_refused_with_bounded_memory(vend: VendProcess) -> None:
    """A 150 MiB header line gets 431 after 64 KiB; vend's memory stays flat and it serves on."""
    _assert_still_serves(vend)
    before = rss_bytes(vend.pid)
    sock = socket.create_connection(("127.0.0.1", vend.port), timeout=10)
    sent = [0]

    def send() -> None:  # vend refuses, lingers, then resets: sending ends with an error
        try:
            sock.sendall(b"GET /f1.txt HTTP/1.1\r\nHost: x\r\nX-Big: ")
            block = b"a" * MIB
            for _ in range(150):
                sock.sendall(block)
                sent[0] += 1
            sock.sendall(b"\r\n\r\n")
        except OSError:
            pass

    sender = threading.Thread(target=send)
    sender.start()
    peak = before
    try:
        head = b""
        deadline = time.monotonic() + 20
        while b"\r\n\r\n" not in head and time.monotonic() < deadline:
            data = sock.recv(4096)
            if not data:
                break
            head += data
            peak = max(peak, rss_bytes(vend.pid))
        _read_until_closed(sock, timeout_s=LINGER_S + SLACK_S)
    finally:
        sender.join(30)
        sock.close()
    peak = max(peak, rss_bytes(vend.pid))
    assert head.startswith(b"HTTP/1.1 431 Request Header Fields Too Large\r\n")
    assert b"\r\nconnection: close\r\n" in head
    assert peak - before < 50 * MIB, (before, peak, sent[0])
    _assert_still_serves(vend)


# Pipelining: in order, byte-exact, at most 16 parsed ahead.


@pytest.mark.parametrize(
    "count",
    [pytest.param(10, id="10"), pytest.param(MAX_PIPELINED_REQUESTS * 2 + 8, id="over-16-queued")],
)
def test_pipelined_requests_are_answered_in_order(vend: VendProcess, count: int) -> None:
    """10, and 40 (over the 16 queued), requests in one packet: every answer, in order, exact."""
    names = [i % FILES for i in range(count)]
    packet = b"".join(_get(b"/f%d.txt" % i) for i in names[:-1])
    packet += _get(b"/f%d.txt" % names[-1], b"Connection: close\r\n")
    with socket.create_connection(("127.0.0.1", vend.port), timeout=10) as sock:
        sock.sendall(packet)
        raw, _ = _read_until_closed(sock, timeout_s=10)
    answers = _responses(raw)
    assert [(status, body) for status, _, body in answers] == [(200, _body(i)) for i in names]


def test_pipeline_flood_keeps_memory_bounded(vend: VendProcess, content: Path) -> None:
    """200 x 1000 pipelined GETs never read: vend stops reading, memory stays flat, answers in order."""
    _assert_still_serves(vend)
    before = rss_bytes(vend.pid)
    blob = _get(b"/k1.bin") * 1000
    batches = 0
    sock = socket.create_connection(("127.0.0.1", vend.port), timeout=10)
    try:
        sock.settimeout(3)  # the kernel's buffers fill once vend stops reading
        try:
            for _ in range(200):
                sock.sendall(blob)
                batches += 1
        except TimeoutError:
            pass
        time.sleep(0.5)
        peak = rss_bytes(vend.pid)
        assert peak - before < 50 * MIB, (before, peak)
        assert batches < 200, "vend read the whole flood: it does not stop reading"
        # The connection is still good: answers arrive, complete and in order.
        answers = _read_responses(sock, 500)
    finally:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()
    expected = (content / "k1.bin").read_bytes()
    assert all((status, body) == (200, expected) for status, _, body in answers)
    _assert_still_serves(vend)


def test_refusal_comes_after_earlier_pipelined_answers(vend: VendProcess) -> None:
    """Two good requests then a 9000-byte target in one packet: 200, 200 (large, sendfile), 414."""
    packet = _get(b"/f4.txt") + _get(b"/big.bin") + _get(b"/f5.txt?" + b"a" * 9000)
    with socket.create_connection(("127.0.0.1", vend.port), timeout=10) as sock:
        sock.sendall(packet)
        raw, _ = _read_until_closed(sock, timeout_s=30)
    answers = _responses(raw)
    assert [status for status, _, _ in answers] == [200, 200, 414]
    assert answers[0][2] == _body(4)
    assert len(answers[1][2]) == BIG_BYTES
    assert answers[2][1]["connection"] == "close"


def test_reset_with_pipelined_requests_logs_no_application_error(vend: VendProcess) -> None:
    """A client that pipelines and resets mid-way never makes a request write to a closed connection."""
    for round_ in range(30):
        packet = _get(b"/f1.txt") + b"".join(
            _get(b"/missing-%d-%d.txt" % (round_, i)) for i in range(14)
        )
        with socket.create_connection(("127.0.0.1", vend.port), timeout=10) as sock:
            sock.sendall(packet)
            assert sock.recv(100).startswith(b"HTTP/1.1 200 ")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    time.sleep(0.5)
    _assert_still_serves(vend)
    assert "Exception in ASGI application" not in vend.output()


# Head time: slowloris and idle connections.


def test_idle_new_connection_is_closed_silently(vend: VendProcess) -> None:
    """A connection that sends nothing is closed after request_head_s, with no response."""
    with socket.create_connection(("127.0.0.1", vend.port), timeout=10) as sock:
        opened = time.monotonic()
        raw, closed = _read_until_closed(sock, timeout_s=REQUEST_HEAD_S + SLACK_S)
    assert raw == b""
    assert closed - opened >= REQUEST_HEAD_S * 0.9


def test_partial_head_gets_408_and_is_closed(vend: VendProcess) -> None:
    """A head that stops half-way gets 408 after request_head_s, then the connection closes."""
    with socket.create_connection(("127.0.0.1", vend.port), timeout=10) as sock:
        sock.sendall(b"GET /f1.txt HTTP/1.1\r\nHost: x\r\n")
        sent = time.monotonic()
        raw, closed = _read_until_closed(sock, timeout_s=REQUEST_HEAD_S + SLACK_S)
    assert raw.startswith(b"HTTP/1.1 408 Request Timeout\r\n")
    assert b"\r\nconnection: close\r\n" in raw
    assert closed - sent >= REQUEST_HEAD_S * 0.9
    _assert_still_serves(vend)


def _drip(sock: socket.socket, data: bytes, every_s: float) -> tuple[bytes, float]:
    """Send one byte every ``every_s`` seconds until the server answers or closes.

    Returns:
        The first bytes received (empty on close) and when, relative to the first byte
        sent, in seconds.
    """
    started = time.monotonic()
    for byte in data:
        try:
            sock.send(bytes([byte]))
        except OSError:
            return b"", time.monotonic() - started
        readable, _, _ = select.select([sock], [], [], every_s)
        if readable:
            try:
                return sock.recv(4096), time.monotonic() - started
            except ConnectionResetError:
                return b"", time.monotonic() - started
    raise AssertionError(f"no answer after {len(data)} bytes over {time.monotonic() - started} s")


def test_dripping_head_is_cut_off_despite_activity(vend: VendProcess) -> None:
    """A head sent one byte per 0.1 s never completes: 408 within request_head_s of its first byte."""
    head = b"GET /f1.txt HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 100  # 10+ s of dripping
    with socket.create_connection(("127.0.0.1", vend.port), timeout=10) as sock:
        answer, after_s = _drip(sock, head, 0.1)
    assert answer.startswith(b"HTTP/1.1 408 ")
    assert REQUEST_HEAD_S * 0.9 <= after_s <= REQUEST_HEAD_S + SLACK_S


def test_line_ends_dripped_on_keep_alive_are_cut_off(vend: VendProcess) -> None:
    """After a response, CRLFs dripped every 0.2 s (which reset uvicorn's keep-alive) are cut off."""
    with socket.create_connection(("127.0.0.1", vend.port), timeout=10) as sock:
        sock.sendall(_get(b"/f1.txt"))
        first = b""
        while not first.endswith(_body(1)):
            first += sock.recv(4096)
        answer, after_s = _drip(sock, b"\r\n" * 50, 0.2)
    assert answer.startswith(b"HTTP/1.1 408 ")
    assert REQUEST_HEAD_S * 0.9 <= after_s <= REQUEST_HEAD_S + SLACK_S


def test_head_time_runs_from_its_first_byte(vend: VendProcess) -> None:
    """Idle keep-alive longer than request_head_s, then a head in two parts: both served."""
    with socket.create_connection(("127.0.0.1", vend.port), timeout=10) as sock:
        sock.sendall(_get(b"/f1.txt"))
        raw = b""
        while not raw.endswith(_body(1)):
            raw += sock.recv(4096)
        time.sleep(REQUEST_HEAD_S * 1.5)  # idle past request_head_s, under keep_alive_s (5 s)
        sock.sendall(b"GET /f2.txt HTTP/1.1\r\n")
        # A short pause, far inside request_head_s even when this process is slow to
        # run again on a busy machine.
        time.sleep(REQUEST_HEAD_S / 10)
        sock.sendall(b"Host: x\r\nConnection: close\r\n\r\n")
        raw, _ = _read_until_closed(sock, timeout_s=5)
    assert [(s, b) for s, _, b in _responses(raw)] == [(200, _body(2))]


def test_requests_queued_behind_a_slow_download_are_not_timed_out(vend: VendProcess) -> None:
    """20 requests queued behind a 32 MiB download unread for 2.5 s: all answered, no 408."""
    names = list(range(FILES))
    packet = _get(b"/big.bin") + b"".join(_get(b"/f%d.txt" % i) for i in names)
    packet += _get(b"/f0.txt", b"Connection: close\r\n")
    with socket.create_connection(("127.0.0.1", vend.port), timeout=10) as sock:
        sock.sendall(packet)
        time.sleep(REQUEST_HEAD_S * 2.5)
        raw, _ = _read_until_closed(sock, timeout_s=30)
    answers = _responses(raw)
    assert [status for status, _, _ in answers] == [200] * (len(names) + 2)
    assert len(answers[0][2]) == BIG_BYTES
    assert [body for _, _, body in answers[1:]] == [_body(i) for i in [*names, 0]]

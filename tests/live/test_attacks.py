"""Attacks on vend's HTTP/1.1 framing, as raw bytes on a real socket to ``vend serve``.

Each test is a finding of an adversarial review, kept as a regression test: a request
pipelined right behind a chunked body, trailer fields taking the place of header
fields, an HTTP/1.0 message with Transfer-Encoding kept alive, and the refresh of a
stale hot name dropped with its connection before it ran, or held behind an answer
nobody reads; and an X-Forwarded-For with spaces forging access log fields.
"""

from __future__ import annotations

import fcntl
import socket
import struct
import termios
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import VendProcess, parse_responses

pytestmark = pytest.mark.live

SMALL = b"a small cached file\n"


@pytest.fixture(scope="module")
def vend(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VendProcess]:
    """``vend serve`` over one mount holding a small file, for the whole module."""
    mount = tmp_path_factory.mktemp("attacks") / "m1"
    mount.mkdir()
    (mount / "small.txt").write_bytes(SMALL)
    # Timers far longer than CLOSE_WINDOW_S: a connection vend leaves open is not closed
    # by them while a test waits to see whether vend closes it.
    proc = VendProcess([str(mount)], {"timeouts__request_head_s": 30, "timeouts__keep_alive_s": 30})
    try:
        proc.start(tmp_path_factory.mktemp("attacks-log") / "vend.log")
        yield proc
    finally:
        proc.stop()


CLOSE_WINDOW_S = 10.0
"""How long a test that expects vend to close the connection waits for it, in seconds (a
liveness bound: vend closes at once; its timers are longer still, see ``vend``)."""


def _exchange(
    port: int, data: bytes, count: int, timeout_s: float = 10.0, after_s: float = 1.0
) -> tuple[bytes, bool]:
    """Send ``data`` in one write; read until ``count`` answers came or the server closed.

    Args:
        port: vend's port.
        data: the bytes to send.
        count: the answers expected.
        timeout_s: bound on the whole exchange, in seconds.
        after_s: how long to keep reading after the last expected answer (for a close,
            or bytes that should not come), in seconds.

    Returns:
        The bytes read and whether the server closed the connection (within ``after_s``
        of the last answer, or at once).
    """
    deadline = time.monotonic() + timeout_s
    out = b""
    closed = False
    with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as sock:
        sock.sendall(data)
        while time.monotonic() < deadline:
            if out.count(b"HTTP/1.1 ") >= count:
                deadline = min(deadline, time.monotonic() + after_s)
            sock.settimeout(max(0.05, deadline - time.monotonic()))
            try:
                chunk = sock.recv(1 << 16)
            except TimeoutError:
                break
            except ConnectionResetError:
                closed = True
                break
            if not chunk:
                closed = True
                break
            out += chunk
    return out, closed


def _chunked(method: bytes, body: bytes, *extra: bytes) -> bytes:
    return (
        method
        + b" /small.txt HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n"
        + b"".join(extra)
        + b"\r\n"
        + body
    )


GET = b"GET /small.txt HTTP/1.1\r\nHost: t\r\n\r\n"


@pytest.mark.parametrize("method", [b"GET", b"POST"])
def test_request_pipelined_right_behind_a_chunked_body_is_answered(
    vend: VendProcess, method: bytes
) -> None:
    """A GET in the same write as a chunked body's last chunk gets its 200, not a 400 and a traceback."""
    before = vend.output().count("Traceback")
    data = _chunked(method, b"5\r\nhello\r\n0\r\n\r\n") + GET + GET
    out, _ = _exchange(vend.port, data, 3)
    answers = parse_responses(out, ["GET"] * 3)
    first = 405 if method == b"POST" else 200
    assert [a.status for a in answers] == [first, 200, 200]
    assert answers[2].body == SMALL
    assert vend.output().count("Traceback") == before


def test_trailer_fields_do_not_act_as_header_fields(vend: VendProcess) -> None:
    """RFC 9110 section 6.5.1: a Range sent as a trailer field is not a Range: 200, whole body."""
    data = _chunked(b"GET", b"0\r\nRange: bytes=0-2\r\n\r\n")
    out, _ = _exchange(vend.port, data, 1)
    (answer,) = parse_responses(out, ["GET"])
    assert (answer.status, answer.body) == (200, SMALL)


def test_trailer_fields_are_still_bounded(vend: VendProcess) -> None:
    """More than 100 trailer fields get 431 and a close, as header fields do."""
    data = _chunked(b"GET", b"0\r\n" + b"X-T: v\r\n" * 101 + b"\r\n")
    out, closed = _exchange(vend.port, data, 1, timeout_s=30, after_s=CLOSE_WINDOW_S)
    (answer,) = parse_responses(out, ["GET"])
    assert answer.status == 431
    assert closed


def test_http10_message_with_transfer_encoding_closes_the_connection(vend: VendProcess) -> None:
    """RFC 9112 section 6.1: HTTP/1.0 with Transfer-Encoding is answered, then closed despite keep-alive."""
    before = vend.output().count("Traceback")
    data = (
        b"GET /small.txt HTTP/1.0\r\nConnection: keep-alive\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"0\r\n\r\n" + GET  # in the same read: never answered
    )
    out, closed = _exchange(vend.port, data, 1, timeout_s=30, after_s=CLOSE_WINDOW_S)
    (answer,) = parse_responses(out, ["GET"])
    assert (answer.status, answer.body) == (200, SMALL)
    assert answer.header(b"connection") != b"keep-alive"
    assert closed
    assert vend.output().count("Traceback") == before


def _wait_until_stuck(sock: socket.socket, bound_s: float = 30.0) -> None:
    """Wait until an answer ``sock`` never reads fills the buffers: bytes wait in its
    receive queue (FIONREAD, tcp(7)) and no more arrive for 0.2 s, so vend's send of it
    is blocked."""
    deadline = time.monotonic() + bound_s
    queued = -1
    while True:
        now = struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.FIONREAD, b"\0" * 4))[0]
        if now > 0 and now == queued:
            return
        assert time.monotonic() < deadline, f"the unread answer still arriving ({now} bytes)"
        queued = now
        time.sleep(0.2)


def _serve_a_stale_hot_name(start_vend: Any, tmp_path: Path) -> VendProcess:
    """vend with /small.txt made hot (answered by the hot path) and then left to go stale,
    and a /huge.bin far larger than loopback buffers hold (cache.ttl_s 1 s, send_s 15 s)."""
    mount = tmp_path / "m1"
    mount.mkdir()
    (mount / "small.txt").write_bytes(SMALL)
    with open(mount / "huge.bin", "wb") as handle:  # far more than loopback buffers hold
        handle.truncate(64 * 1024 * 1024)
    proc: VendProcess = start_vend([str(mount)], {"cache__ttl_s": 1, "timeouts__send_s": 15})
    with socket.create_connection(("127.0.0.1", proc.port), timeout=10) as sock:
        for _ in range(2):  # the second answer is the hot path's: the name is hot
            sock.sendall(GET)
            assert sock.recv(1 << 16).startswith(b"HTTP/1.1 200 OK")
    time.sleep(1.5)  # stale now
    return proc


def test_refresh_dropped_with_its_connection_does_not_stall_the_name(
    start_vend: Any, tmp_path: Path
) -> None:
    """A stale hot name's refresh queued on a connection reset before it ran: the next GET is not held."""
    proc = _serve_a_stale_hot_name(start_vend, tmp_path)
    with socket.create_connection(("127.0.0.1", proc.port)) as sock:
        sock.sendall(b"GET /huge.bin HTTP/1.1\r\nHost: t\r\n\r\n" + GET)  # never read
        _wait_until_stuck(sock)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    time.sleep(0.2)  # the reset reached vend: the refresh of /small.txt was dropped
    for _ in range(2):  # each asks once the name is stale again
        started = time.monotonic()
        out, _ = _exchange(proc.port, GET, 1, timeout_s=20)
        assert parse_responses(out, ["GET"])[0].body == SMALL
        assert time.monotonic() - started < 5.0
        time.sleep(1.5)


def test_refresh_queued_behind_an_unread_answer_does_not_hold_others(
    start_vend: Any, tmp_path: Path
) -> None:
    """A stale hot name asked behind an answer its client never reads: others get it at once."""
    proc = _serve_a_stale_hot_name(start_vend, tmp_path)
    with socket.create_connection(("127.0.0.1", proc.port)) as holder:
        holder.sendall(b"GET /huge.bin HTTP/1.1\r\nHost: t\r\n\r\n" + GET)  # never read
        _wait_until_stuck(holder)
        started = time.monotonic()
        out, _ = _exchange(proc.port, GET, 1, timeout_s=20)
        assert parse_responses(out, ["GET"])[0].body == SMALL
        assert time.monotonic() - started < 5.0


def test_forwarded_address_cannot_forge_access_log_fields(start_vend: Any, tmp_path: Path) -> None:
    """A trusted peer's X-Forwarded-For with spaces stays one field: the line's date is vend's own."""
    mount = tmp_path / "m1"
    mount.mkdir()
    (mount / "small.txt").write_bytes(SMALL)
    log = tmp_path / "access.log"
    proc: VendProcess = start_vend([str(mount)], {"access_log": str(log)})  # 127.0.0.1 trusted
    forged = b"10.9.9.9 - - [01/Jan/2000:00:00:00 +0000] x"
    request = b"GET /small.txt HTTP/1.1\r\nHost: t\r\nX-Forwarded-For: " + forged + b"\r\n"
    _exchange(proc.port, GET, 1)  # in the cache now
    for extra in (b"\r\n", b"Range: bytes=0-1\r\n\r\n"):  # the hot path, then the application
        _exchange(proc.port, request + extra, 1)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and log.read_text().count("\n") < 3:
        time.sleep(0.05)
    lines = log.read_text().splitlines()
    assert len(lines) == 3
    for line in lines[1:]:
        host, rest = line.split(" ", 1)
        assert host.startswith("10.9.9.9") and "01/Jan/2000" in host
        assert rest.startswith("- - [") and "2000" not in rest.split("]")[0]

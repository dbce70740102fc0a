"""Streaming from ``vend serve``: sendfile proven from outside, flat memory, aborts.

These tests run the real server over real sockets: httpx's in-process transport buffers
bodies and so proves nothing about streaming.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from app.settings import Settings
from tests.live.conftest import Tree
from tests.support import VendProcess, open_fds, rss_bytes

pytestmark = pytest.mark.live

MIB = 1024 * 1024


def _drain(port: int, path: bytes, limit_s: float = 60.0) -> tuple[int, int]:
    """GET ``path`` with Connection: close and count body bytes; returns (length, received)."""
    with socket.create_connection(("127.0.0.1", port), timeout=limit_s) as sock:
        sock.sendall(b"GET " + path + b" HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        buffered = b""
        while b"\r\n\r\n" not in buffered:
            chunk = sock.recv(65536)
            assert chunk, "connection closed before the headers"
            buffered += chunk
        head, _, rest = buffered.partition(b"\r\n\r\n")
        length = int(re.search(rb"(?im)^content-length: *(\d+)", head).group(1))  # type: ignore[union-attr]
        received = len(rest)
        deadline = time.monotonic() + limit_s
        while time.monotonic() < deadline:
            chunk = sock.recv(1 << 20)
            if not chunk:
                break
            received += len(chunk)
        return length, received


@pytest.fixture
def huge_sparse(tree: Tree) -> Path:
    """A 1 GiB sparse file on the last mount (no disk cost: zeros on read)."""
    path = tree.mounts[2] / "huge.bin"
    with open(path, "wb") as handle:
        handle.truncate(1024 * MIB)
    yield path
    path.unlink()


def test_memory_stays_flat_while_a_gigabyte_is_sent(server: VendProcess, huge_sparse: Path) -> None:
    """The server's resident set grows by less than 32 MiB while sending a 1 GiB body."""
    _drain(server.port, b"/docs/only-m3.css")  # warm up imports and threads
    before = rss_bytes(server.pid)
    peak = before
    with socket.create_connection(("127.0.0.1", server.port), timeout=60) as sock:
        sock.sendall(b"GET /huge.bin HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        received = 0
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            chunk = sock.recv(1 << 20)
            if not chunk:
                break
            received += len(chunk)
            if received % (64 * MIB) < (1 << 20):
                peak = max(peak, rss_bytes(server.pid))
    assert received > 1024 * MIB, "the whole body (and headers) arrived"
    assert peak - before < 32 * MIB, (before, peak)


def _every_thread_traced(pid: int) -> bool:
    """Whether each thread of ``pid`` has a tracer (``TracerPid`` in its status, proc(5))."""
    statuses = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(FileNotFoundError):  # a thread that just ended
            statuses.append((task / "status").read_text())
    return bool(statuses) and all("TracerPid:\t0\n" not in status for status in statuses)


def _strace_bytes(pid: int, action: Any, out: Path) -> int:
    """Run ``action`` while strace counts the bytes every sendfile(2) of ``pid`` returned."""
    strace = subprocess.Popen(
        ["strace", "-f", "-qq", "-e", "trace=sendfile", "-o", str(out), "-p", str(pid)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        # strace -p attaches to each thread in turn: wait until every one is traced.
        deadline = time.monotonic() + 30
        while not _every_thread_traced(pid):
            assert strace.poll() is None, "strace exited"
            assert time.monotonic() < deadline, "strace did not attach to every thread"
            time.sleep(0.05)
        action()
    finally:
        strace.send_signal(signal.SIGINT)
        strace.wait(10)
    total = 0
    for line in out.read_text().splitlines():
        if "sendfile" in line and (m := re.search(r"= (\d+)\s*$", line)):
            total += int(m.group(1))
    return total


@pytest.mark.skipif(shutil.which("strace") is None, reason="strace is installed by tests/run")
def test_vend_serve_sends_bodies_with_sendfile(
    server: VendProcess, tree: Tree, tmp_path: Path
) -> None:
    """strace attached to the server accounts for at least 90% of a 64 MiB body."""
    path = tree.mounts[2] / "sixty-four.bin"
    path.write_bytes(os.urandom(64 * MIB))
    try:
        results: list[tuple[int, int]] = []
        total = _strace_bytes(
            server.pid,
            lambda: results.append(_drain(server.port, b"/sixty-four.bin")),
            tmp_path / "st",
        )
    finally:
        path.unlink()
    assert results == [(64 * MIB, 64 * MIB)]
    assert total >= 0.9 * 64 * MIB, total


def test_disconnect_mid_body_frees_the_descriptor_at_once(server: VendProcess) -> None:
    """A client that hangs up mid-body leaves no descriptor open in the server."""
    _drain(server.port, b"/docs/only-m3.css")
    baseline = open_fds(server.pid)
    for _ in range(3):
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
            sock.sendall(b"GET /big.bin HTTP/1.1\r\nHost: t\r\n\r\n")
            assert sock.recv(65536)
            sock.setsockopt(
                socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
            )
    deadline = time.monotonic() + 5
    while open_fds(server.pid) > baseline and time.monotonic() < deadline:
        time.sleep(0.05)
    assert open_fds(server.pid) <= baseline


def test_a_file_that_shrinks_while_sent_ends_the_connection(
    server: VendProcess, tree: Tree
) -> None:
    """Truncating a file mid-response aborts the connection: the body stays short of its length."""
    path = tree.mounts[2] / "shrinking.bin"
    path.write_bytes(os.urandom(48 * MIB))
    try:
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
            sock.sendall(b"GET /shrinking.bin HTTP/1.1\r\nHost: t\r\n\r\n")
            first = sock.recv(4096)
            assert first.startswith(b"HTTP/1.1 200")
            os.truncate(path, 1 * MIB)
            received = len(first.partition(b"\r\n\r\n")[2])
            deadline = time.monotonic() + 20
            closed = False
            while time.monotonic() < deadline:
                try:
                    chunk = sock.recv(1 << 20)
                except ConnectionResetError:
                    closed = True
                    break
                if not chunk:
                    closed = True
                    break
                received += len(chunk)
        assert closed, "the server ended the connection"
        assert received < 48 * MIB
    finally:
        path.unlink()


def test_thread_fallback_is_byte_exact_without_the_extension(
    tree: Tree, start_vend: Any, tmp_path: Path
) -> None:
    """Under plain uvicorn (no zero-copy extension) bodies are read in threads, byte-exact."""
    settings = Settings(mounts=[str(m) for m in tree.mounts])
    proc = start_vend(
        command=[
            sys.executable,
            "-m",
            "uvicorn",
            "--factory",
            "app.server.serve:app_from_environment",
            "--port",
            "{port}",
        ],
        extra_env={"VEND_RESOLVED_SETTINGS": settings.model_dump_json()},
    )
    data = tree.big.read_bytes()
    got: dict[str, Any] = {}

    def fetch() -> None:
        with proc.client() as client:
            got["full"] = client.get("/big.bin")
            got["one"] = client.get("/big.bin", headers={"Range": "bytes=100-5000099"})
            got["multi"] = client.get("/big.bin", headers={"Range": "bytes=0-9,-10"})
            got["head"] = client.head("/big.bin")

    assert _strace_bytes(proc.pid, fetch, tmp_path / "st") == 0, "no sendfile without the extension"
    full, one, multi, head = got["full"], got["one"], got["multi"], got["head"]
    assert full.status_code == 200 and full.content == data
    assert one.status_code == 206 and one.content == data[100:5000100]
    assert multi.status_code == 206 and data[:10] in multi.content and data[-10:] in multi.content
    assert head.headers["content-length"] == str(len(data)) and head.content == b""

"""500 slow clients against a healthy vend: every body completes, memory stays bounded."""

from __future__ import annotations

import os
import selectors
import socket
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support import rss_bytes

pytestmark = pytest.mark.live

CLIENTS = 500
BODY = 1024 * 1024  # over cache.max_file_bytes: sent with sendfile
READ = 16 * 1024


def test_five_hundred_slow_clients(tmp_path: Path, start_vend: Any) -> None:
    """500 clients reading 16 KiB at a time, slowly: all complete, others are served meanwhile."""
    mount = tmp_path / "m1"
    mount.mkdir()
    data = os.urandom(BODY)
    (mount / "large.bin").write_bytes(data)
    (mount / "small.txt").write_bytes(b"small")
    proc = start_vend([str(mount)])
    with proc.client() as client:
        assert client.get("/large.bin").content == data
    before = rss_bytes(proc.pid)
    selector = selectors.DefaultSelector()
    received: dict[socket.socket, bytearray] = {}
    for _ in range(CLIENTS):
        sock = socket.create_connection(("127.0.0.1", proc.port), timeout=10)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8192)
        sock.sendall(b"GET /large.bin HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        sock.setblocking(False)
        selector.register(sock, selectors.EVENT_READ)
        received[sock] = bytearray()
    peak = before
    done: list[bytes] = []
    fast_latencies = []
    deadline = time.monotonic() + 90
    next_check = time.monotonic()
    try:
        while len(done) < CLIENTS and time.monotonic() < deadline:
            for key, _ in selector.select(timeout=0.5):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                chunk = sock.recv(READ)
                if chunk:
                    received[sock] += chunk
                else:
                    selector.unregister(sock)
                    sock.close()
                    done.append(bytes(received.pop(sock)))
            time.sleep(0.02)  # slow readers: at most one 16 KiB read each per round
            if time.monotonic() >= next_check:  # once a second: memory, and a fast client
                next_check = time.monotonic() + 1.0
                peak = max(peak, rss_bytes(proc.pid))
                started = time.monotonic()
                with httpx.Client(base_url=proc.url, timeout=10) as fast:
                    assert fast.get("/small.txt").content == b"small"
                fast_latencies.append(time.monotonic() - started)
    finally:
        for sock in list(received):
            selector.unregister(sock)
            sock.close()
        selector.close()
    assert len(done) == CLIENTS, f"{len(done)} of {CLIENTS} completed in time"
    for response in done:
        head, _, body = response.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200")
        assert body == data
    assert peak - before < 64 * 1024 * 1024, (before, peak)
    assert max(fast_latencies) < 5


def test_queueing_for_threads_is_load_not_a_failure(tmp_path: Path, start_vend: Any) -> None:
    """Many downloads sharing one mount thread all complete; waiting for the thread never
    counts as a timeout (regression: queued sendfile chunks were aborted, the mount marked down)."""
    import asyncio

    mount = tmp_path / "m1"
    mount.mkdir()
    data = os.urandom(8 * 1024 * 1024)
    (mount / "big.bin").write_bytes(data)
    proc = start_vend(
        [str(mount)], {"threads_per_mount": 1, "timeouts": {"fs_op_s": 0.3, "send_s": 30}}
    )

    async def fetch_all() -> list[bytes]:
        limits = httpx.Limits(max_connections=40)
        async with httpx.AsyncClient(base_url=proc.url, timeout=60, limits=limits) as client:
            responses = await asyncio.gather(*(client.get("/big.bin") for _ in range(40)))
        return [r.content for r in responses]

    bodies = asyncio.run(fetch_all())
    assert all(body == data for body in bodies)
    with proc.client() as client:
        assert client.get("/.well-known/vend/health").json()["mounts"][0]["state"] == "up"
    assert "timed out" not in proc.output() and "ran over" not in proc.output()

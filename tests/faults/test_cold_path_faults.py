"""The cold path (``app.server.cold``) when a mount fails under it, through the real server.

A request for a name the cache does not hold is looked up below ASGI, in batches per
mount (``app.federation.batch``). These check that a batch in which some names fail
answers each name as a lookup of its own would (per ``down_mount_policy``), and that
requests whose connections go away while their lookups run leave no descriptor open.
Mount 1 is a faultfs FUSE mount (kernel caching off); mount 2 a plain directory.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import struct
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

pytestmark = [
    pytest.mark.fuse,
    pytest.mark.skipif(
        not os.path.exists("/dev/fuse") or shutil.which("fusermount3") is None,
        reason="needs /dev/fuse and fusermount3 (tests/run installs fuse3)",
    ),
]

NAMES = 40
BIG_BYTES = 1024 * 1024  # above cache.max_file_bytes: served from an open descriptor


def _trees(tmp_path: Path) -> tuple[Path, Path]:
    src1, m2 = tmp_path / "src1", tmp_path / "m2"
    src1.mkdir()
    m2.mkdir()
    for i in range(NAMES):
        (src1 / f"r{i}.txt").write_bytes(b"m1 r%d" % i)
        (m2 / f"r{i}.txt").write_bytes(b"m2 r%d" % i)
    return src1, m2


async def _burst(url: str, names: list[str]) -> list[tuple[int, bytes]]:
    """Every name at once, each on its own connection."""
    limits = httpx.Limits(max_connections=len(names))
    async with httpx.AsyncClient(base_url=url, timeout=30, limits=limits) as client:

        async def one(name: str) -> tuple[int, bytes]:
            response = await client.get(name)
            return response.status_code, response.content

        return await asyncio.gather(*(one(n) for n in names))


@pytest.mark.parametrize("policy", ["unavailable", "skip"])
def test_names_failing_mid_batch_are_answered_as_their_own_lookups_would(
    tmp_path: Path, start_vend: Any, faultfs: Any, policy: str
) -> None:
    """Forty names remembered on mount 1, asked at once while mount 1 fails (EIO) for ten
    of them: under "unavailable" those ten get 503 and no name ever gets mount 2's older
    copy; under "skip" those ten get mount 2's copy. Every other name gets mount 1's copy,
    or (asked once mount 1 is down) what the policy gives a name of a down mount."""
    src1, m2 = _trees(tmp_path)
    fs = faultfs(src1)
    proc = start_vend(
        [{"path": str(fs.mountpoint), "name": "m1"}, {"path": str(m2), "name": "m2"}],
        {
            "down_mount_policy": policy,
            # No cache: every request is looked up, and names stay remembered on m1.
            "cache": {"ttl_s": 0, "miss_ttl_s": 0},
            "timeouts": {"fs_op_s": 5.0, "probe_interval_s": 0.5},
        },
    )
    names = [f"/r{i}.txt" for i in range(NAMES)]
    first = asyncio.run(_burst(proc.url, names))
    assert first == [(200, b"m1 r%d" % i) for i in range(NAMES)]
    fs.inject("getattr", "/r1*", "EIO")  # r1, r10..r19: ten names fail, the rest do not
    results = asyncio.run(_burst(proc.url, names))
    down_answer = (503, None) if policy == "unavailable" else (200, b"m2 r%d")
    for i, (status, body) in enumerate(results):
        failing = str(i).startswith("1")
        own = (200, b"m1 r%d" % i)
        later = (down_answer[0], down_answer[1] and down_answer[1] % i)
        if status == 503:
            assert later[0] == 503, (i, status, body)
        else:
            assert (status, body) in ([later] if failing else [own, later]), (i, status, body)
            if policy == "unavailable":
                assert not body.startswith(b"m2"), (i, body)
        if failing:
            assert status == later[0], (i, status, body)
    fs.lift()
    deadline = time.monotonic() + 30
    with httpx.Client(base_url=proc.url, timeout=10) as client:
        while client.get("/r10.txt").content != b"m1 r10":
            assert time.monotonic() < deadline, "mount 1 never served again"
            time.sleep(0.1)
    assert asyncio.run(_burst(proc.url, names)) == [(200, b"m1 r%d" % i) for i in range(NAMES)]


def _fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def test_requests_gone_while_their_lookups_run_leave_no_descriptor_open(
    tmp_path: Path, start_vend: Any, faultfs: Any
) -> None:
    """Thirty clients ask for large files (open descriptors) while mount 1's opens hang,
    and reset their connections before the answers: once the opens return, every file opened is closed
    (FUSE sees each release), vend holds no more descriptors than before, and the files
    are served to the next clients."""
    src1, m2 = tmp_path / "src1", tmp_path / "m2"
    src1.mkdir()
    m2.mkdir()
    for i in range(30):
        (src1 / f"big{i}.bin").write_bytes(bytes([i]) * BIG_BYTES)
    fs = faultfs(src1)
    proc = start_vend(
        [{"path": str(fs.mountpoint), "name": "m1"}, {"path": str(m2), "name": "m2"}],
        {"timeouts": {"fs_op_s": 30.0, "probe_interval_s": 0.5}},
    )
    with httpx.Client(base_url=proc.url, timeout=10) as client:
        assert client.get("/.well-known/vend/health").status_code == 200
    before = _fds(proc.pid)
    fs.inject("open", "/big*", "hang")
    clients = []
    for i in range(30):
        sock = socket.create_connection(("127.0.0.1", proc.port), timeout=10)
        sock.sendall(b"GET /big%d.bin HTTP/1.1\r\nHost: t\r\n\r\n" % i)
        clients.append(sock)
    fs.wait_hung(1, timeout_s=10)  # a lookup is in the mount's open, held
    for sock in clients:  # reset, not a half-close: a FIN would still be answered
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()
    fs.lift()
    # Every file opened for those lookups is closed again (FUSE sees its release).
    paths = [f"/big{i}.bin" for i in range(30)]
    deadline = time.monotonic() + 20
    while True:
        calls = fs.calls()
        opened = [calls.get(("open", p), 0) for p in paths]
        released = [calls.get(("release", p), 0) for p in paths]
        if all(opened) and released == opened:
            break
        assert time.monotonic() < deadline, (opened, released)
        time.sleep(0.05)
    deadline = time.monotonic() + 20
    while _fds(proc.pid) > before:  # and the connections' sockets are gone
        assert time.monotonic() < deadline, (before, _fds(proc.pid))
        time.sleep(0.05)
    with httpx.Client(base_url=proc.url, timeout=10) as client:
        for i in (0, 29):
            response = client.get(f"/big{i}.bin")
            assert (response.status_code, response.content) == (200, bytes([i]) * BIG_BYTES)

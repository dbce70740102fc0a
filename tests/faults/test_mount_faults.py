"""A dead, slow or failing mount must never take vend down (the faults issue).

Mount 1 is a faultfs FUSE mount (kernel caching off) over a real directory; mount 2 is
a plain directory. Faults are injected at run time inside the FUSE server, so vend's
threads really block in the kernel or really get EIO/ESTALE, as on a dead NFS server.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support import VendProcess

pytestmark = [
    pytest.mark.fuse,
    pytest.mark.skipif(
        not os.path.exists("/dev/fuse") or shutil.which("fusermount3") is None,
        reason="needs /dev/fuse and fusermount3 (tests/run installs fuse3)",
    ),
]

# start_vend is requested before faultfs in every test, so that at teardown the faults
# are lifted and the mount taken down first, and vend's held threads are let go.
FAST = {
    "timeouts": {
        "fs_op_s": 1.0,
        "probe_interval_s": 0.5,
        "send_s": 10,
        "keep_alive_s": 5,
        "graceful_shutdown_s": 2,
    },
    "cache": {"ttl_s": 0.5, "miss_ttl_s": 0.2},
}


def _trees(tmp_path: Path, names_on_m2: int = 0) -> tuple[Path, Path]:
    src1, m2 = tmp_path / "src1", tmp_path / "m2"
    src1.mkdir()
    m2.mkdir()
    (src1 / "on-m1.txt").write_bytes(b"m1 copy")
    (m2 / "on-m1.txt").write_bytes(b"older m2 copy")
    (src1 / "only-m1.txt").write_bytes(b"only m1")
    (m2 / "only-m2.txt").write_bytes(b"only m2")
    for i in range(names_on_m2):
        (m2 / f"page-{i}.html").write_bytes(f"page {i}".encode())
    return src1, m2


def _health(proc: VendProcess) -> dict[str, Any]:
    with proc.client() as client:
        data: dict[str, Any] = client.get("/.well-known/vend/health").json()
    return {m["name"]: m for m in data["mounts"]}


def _wait_for(predicate: Any, bound_s: float, what: str) -> float:
    started = time.monotonic()
    while time.monotonic() - started < bound_s:
        if predicate():
            return time.monotonic() - started
        time.sleep(0.1)
    pytest.fail(f"{what} not within {bound_s} s")


async def _wave(url: str, names: list[str]) -> list[tuple[int, bytes, float]]:
    limits = httpx.Limits(max_connections=len(names))
    async with httpx.AsyncClient(base_url=url, timeout=10, limits=limits) as client:

        async def one(name: str) -> tuple[int, bytes, float]:
            started = time.monotonic()
            response = await client.get(name)
            return response.status_code, response.content, time.monotonic() - started

        return await asyncio.gather(*(one(n) for n in names))


def test_hung_mount_does_not_delay_other_mounts(
    tmp_path: Path, start_vend: Any, faultfs: Any
) -> None:
    """At the default settings (fs_op_s 5 s), with mount 1 hung for 20 s, every wave of 24
    concurrent requests for never-requested mount-2 names, the first one included, is
    served within 3 s; vend adds no held call once the mount is overdue or down; health
    shows it; after the lift mount 1 serves again."""
    src1, m2 = _trees(tmp_path, names_on_m2=800)
    fs = faultfs(src1)
    proc = start_vend([{"path": str(fs.mountpoint), "name": "m1"}, {"path": str(m2), "name": "m2"}])
    with proc.client() as client:
        assert client.get("/only-m1.txt").content == b"only m1"
    fs.inject("*", "*", "hang")
    hung_at = time.monotonic()
    fresh = iter(range(800))
    waves, held_after_first = 0, 0
    while time.monotonic() - hung_at < 20:
        wave = [next(fresh) for _ in range(24)]
        results = asyncio.run(_wave(proc.url, [f"/page-{i}.html" for i in wave]))
        waves += 1
        assert [(s, b) for s, b, _ in results] == [(200, f"page {i}".encode()) for i in wave]
        slowest = max(t for _, _, t in results)
        assert slowest < 3.0, (waves, sorted(round(t, 3) for _, _, t in results))
        held = fs.hung()
        assert any(h.pid == proc.pid for h in held), held  # a vend thread blocked in FUSE
        if waves == 1:
            held_after_first = len(held)
            assert _health(proc)["m1"]["state"] in ("overdue", "down")
            assert _health(proc)["m2"]["state"] == "up"
        # Once overdue or down, at most one operation besides the probe is started.
        assert len(held) <= held_after_first + 2, (waves, held)
        time.sleep(1.5)
    assert waves >= 5
    assert _health(proc)["m1"]["state"] == "down"
    assert _health(proc)["m1"]["last_error"] == "ETIMEDOUT"
    fs.lift()
    _wait_for(lambda: _health(proc)["m1"]["state"] == "up", 15, "mount 1 healthy again")
    with proc.client() as client:
        assert client.get("/only-m1.txt").content == b"only m1"
        assert client.get("/on-m1.txt").content == b"m1 copy"


def test_eio_mount_answers_503_for_its_names(tmp_path: Path, start_vend: Any, faultfs: Any) -> None:
    """Mount 1 returning EIO: its known names get 503 + Retry-After, never m2's older copy;
    names only on mount 2 are served."""
    src1, m2 = _trees(tmp_path)
    fs = faultfs(src1)
    proc = start_vend(
        [{"path": str(fs.mountpoint), "name": "m1"}, {"path": str(m2), "name": "m2"}], FAST
    )
    with proc.client() as client:
        assert client.get("/on-m1.txt").content == b"m1 copy"  # now known to live on m1
        fs.inject("*", "*", "EIO")
        # Until cache.ttl_s has passed the remembered answer may still be served; after
        # it, 503. Each answer on the way is one of the two, never mount 2's older copy.
        answers: list[tuple[int, bytes]] = []

        def refused() -> bool:
            answer = client.get("/on-m1.txt")
            answers.append((answer.status_code, answer.content))
            return answer.status_code == 503 and bool(answer.headers["retry-after"])

        _wait_for(refused, 10, "503 for a name known on the failing mount (ttl_s is 0.5)")
        assert {status for status, _ in answers} <= {200, 503}, answers
        assert all(body == b"m1 copy" for status, body in answers if status == 200), answers
        assert all(b"older" not in body for _, body in answers), answers
        assert client.get("/only-m2.txt").content == b"only m2"
        assert client.get("/never-seen.txt").status_code == 503  # m1 might hold it
        assert _health(proc)["m1"]["last_error"] == "EIO"
        fs.lift()
        _wait_for(lambda: client.get("/on-m1.txt").status_code == 200, 10, "m1 serving again")
        assert client.get("/on-m1.txt").content == b"m1 copy"


def test_estale_once_is_retried(tmp_path: Path, start_vend: Any, faultfs: Any) -> None:
    """A stale file handle (ESTALE) once is retried: the file is served, the mount stays up."""
    src1, m2 = _trees(tmp_path)
    fs = faultfs(src1)
    proc = start_vend(
        [{"path": str(fs.mountpoint), "name": "m1"}, {"path": str(m2), "name": "m2"}], FAST
    )
    # The kernel itself retries a path walk once on ESTALE: two firings reach vend once.
    fs.inject("getattr", "/only-m1.txt", "ESTALE", count=2)
    with proc.client() as client:
        response = client.get("/only-m1.txt")
    assert (response.status_code, response.content) == (200, b"only m1")
    assert fs.faults() == [] or all(f["remaining"] == 0 for f in fs.faults())
    assert _health(proc)["m1"]["state"] == "up"


def test_eio_mid_body_aborts_the_connection(tmp_path: Path, start_vend: Any, faultfs: Any) -> None:
    """EIO while the body is being sent ends the connection: never a complete-looking response."""
    src1, m2 = _trees(tmp_path)
    size = 8 * 1024 * 1024
    (src1 / "big.bin").write_bytes(os.urandom(size))
    fs = faultfs(src1)
    proc = start_vend(
        [{"path": str(fs.mountpoint), "name": "m1"}, {"path": str(m2), "name": "m2"}], FAST
    )
    fs.inject("read", "/big.bin", "EIO", min_offset=2 * 1024 * 1024)
    received = 0
    with socket.create_connection(("127.0.0.1", proc.port), timeout=10) as sock:
        sock.sendall(b"GET /big.bin HTTP/1.1\r\nHost: t\r\n\r\n")
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = sock.recv(65536)
            assert chunk
            head += chunk
        assert head.startswith(b"HTTP/1.1 200")
        received = len(head.partition(b"\r\n\r\n")[2])
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                chunk = sock.recv(1 << 20)
            except ConnectionResetError:
                break
            if not chunk:
                break
            received += len(chunk)
        else:
            pytest.fail("connection neither closed nor reset")
    assert received < size


def _task_states(pid: int) -> dict[int, str]:
    """State letter (R, S, D, Z...) of each thread of a process, from /proc (proc(5))."""
    states = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(FileNotFoundError):
            stat = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
            states[int(tid)] = stat.rsplit(")", 1)[1].split()[0]
    return states


def test_sigterm_exits_in_bounded_time_with_a_hung_mount(
    tmp_path: Path, start_vend: Any, faultfs: Any
) -> None:
    """SIGTERM while a thread is blocked on a hung mount: vend stops serving and exits in time.

    A thread inside a FUSE request that the FUSE server already holds cannot be killed
    by any signal (fs/fuse/dev.c waits uninterruptibly); on NFS such waits are killable.
    So the bound is checked on what vend controls: the listening socket is closed and
    every thread but the one held by the kernel has exited (the main thread is a zombie);
    the process is reaped as soon as the kernel lets that thread go.
    """
    src1, m2 = _trees(tmp_path)
    fs = faultfs(src1)
    settings = {**FAST, "timeouts": {**FAST["timeouts"], "fs_op_s": 60.0}}
    proc = start_vend(
        [{"path": str(fs.mountpoint), "name": "m1"}, {"path": str(m2), "name": "m2"}], settings
    )
    fs.inject("*", "/only-m1.txt", "hang")
    sock = socket.create_connection(("127.0.0.1", proc.port), timeout=5)
    try:
        sock.sendall(b"GET /only-m1.txt HTTP/1.1\r\nHost: t\r\n\r\n")
        held = fs.wait_hung(1, timeout_s=5)
        assert held[0].pid == proc.pid  # a vend thread is blocked in the kernel
        os.killpg(proc.pid, signal.SIGTERM)
        assert proc.proc is not None

        def stopped() -> bool:
            if proc.proc.poll() is not None:
                return True
            states = _task_states(proc.pid)
            others = [state for tid, state in states.items() if tid != proc.pid]
            return states.get(proc.pid) == "Z" and others == ["D"] * len(held)

        _wait_for(stopped, 30, "vend's exit (graceful_shutdown_s is 2)")
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", proc.port), timeout=2).close()
        assert "Application shutdown complete" in proc.output()
        fs.lift()
        proc.proc.wait(timeout=10)  # reaped once the kernel releases the held thread
    finally:
        sock.close()


def test_sighup_adds_a_mount_with_no_failed_request(tmp_path: Path, start_vend: Any) -> None:
    """SIGHUP adding a third mount under 50 concurrent connections: nothing fails, new names appear."""
    m1, m2, m3 = (tmp_path / n for n in ("m1", "m2", "m3"))
    for m in (m1, m2, m3):
        m.mkdir()
    (m1 / "a.txt").write_bytes(b"a")
    (m2 / "b.txt").write_bytes(b"b")
    (m3 / "c.txt").write_bytes(b"c")
    config = tmp_path / "vend.toml"
    config.write_text(f'mounts = ["{m1}", "{m2}"]\n[cache]\nttl_s = 0.2\nmiss_ttl_s = 0.1\n')
    proc = start_vend(None, args=["--config", str(config)])
    with proc.client() as client:
        assert client.get("/c.txt").status_code == 404

    reloaded_at: list[float] = []

    async def load(duration_s: float) -> list[tuple[float, int]]:
        statuses: list[tuple[float, int]] = []
        limits = httpx.Limits(max_connections=50, max_keepalive_connections=50)
        async with httpx.AsyncClient(base_url=proc.url, timeout=10, limits=limits) as client:

            async def worker() -> None:
                end = time.monotonic() + duration_s
                while time.monotonic() < end:
                    for name in ("/a.txt", "/b.txt"):
                        status = (await client.get(name)).status_code
                        statuses.append((time.monotonic(), status))

            async def reload_midway() -> None:
                await asyncio.sleep(duration_s / 2)
                config.write_text(
                    f'mounts = ["{m1}", "{m2}", "{m3}"]\n[cache]\nttl_s = 0.2\nmiss_ttl_s = 0.1\n'
                )
                os.kill(proc.pid, signal.SIGHUP)
                reloaded_at.append(time.monotonic())

            await asyncio.gather(reload_midway(), *(worker() for _ in range(50)))
        return statuses

    statuses = asyncio.run(load(3.0))
    assert {status for _, status in statuses} == {200}
    before = [t for t, _ in statuses if t < reloaded_at[0] - 0.5]
    after = [t for t, _ in statuses if t > reloaded_at[0] + 0.5]
    assert len(before) >= 50 and len(after) >= 50, (len(before), len(after))
    with proc.client() as client:
        _wait_for(
            lambda: client.get("/c.txt").status_code == 200, 5, "name on the new mount served"
        )
        assert _health(proc).keys() == {"m1", "m2", "m3"}
    # An invalid config is refused and the current one stays.
    config.write_text("mounts = 5\n")
    os.kill(proc.pid, signal.SIGHUP)
    _wait_for(lambda: "reload refused" in proc.output(), 10, "the invalid config refused")
    with proc.client() as client:
        assert client.get("/c.txt").status_code == 200

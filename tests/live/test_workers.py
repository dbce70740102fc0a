"""vend serve --workers N: every worker serves, reloads in place, and is supervised."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support import VEND, free_port, get_raw

pytestmark = pytest.mark.live

SMALL = b"small file, served from the name cache\n"
LARGE = bytes(range(256)) * 1200  # 300 KiB: over cache.max_file_bytes, sent with sendfile
NEW = b"a file on the mount added by a reload\n"


def _total_200(text: str) -> float:
    match = re.search(r'^vend_requests_total\{status="200"\} (\S+)$', text, re.M)
    return float(match.group(1)) if match else 0.0


def _children(pid: int) -> list[int]:
    """vend's worker processes (``python -m app.server.workers``)."""
    children = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        children += [int(c) for c in (task / "children").read_text().split()]
    return sorted(c for c in children if b"app.server.workers" in _cmdline(c))


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except FileNotFoundError:
        return b""


def _wait_for(what: str, predicate: Callable[[], Any], timeout_s: float = 30.0) -> Any:
    """Poll ``predicate`` every 0.1 s until it returns something true, at most ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _health_by_pid(url: str, pids: list[int], attempts: int = 400) -> dict[int, dict[str, Any]]:
    """Health JSON from each of ``pids``, asked on new connections until each has answered."""
    answers: dict[int, dict[str, Any]] = {}
    for _ in range(attempts):
        with httpx.Client(base_url=url, timeout=10) as client:  # a new connection each time
            body = client.get("/.well-known/vend/health").json()
        answers[body["process"]["pid"]] = body
        if set(pids) <= set(answers):
            return answers
    raise AssertionError(f"only workers {sorted(answers)} of {pids} answered")


def _served_by_each(url: str, pids: list[int], target: str) -> dict[int, httpx.Response]:
    """Each worker's answer to ``target``, told apart by the health JSON on the same connection."""
    answers: dict[int, httpx.Response] = {}
    for _ in range(400):
        with httpx.Client(base_url=url, timeout=10) as client:  # one connection, one worker
            pid = client.get("/.well-known/vend/health").json()["process"]["pid"]
            answers[pid] = client.get(target)
        if set(pids) <= set(answers):
            return answers
    raise AssertionError(f"only workers {sorted(answers)} of {pids} answered")


def _start_workers(
    start_vend: Any, tmp_path: Path, mounts: list[Path], extra_toml: str = ""
) -> tuple[Any, Path]:
    config = tmp_path / "vend.toml"
    config.write_text(_toml(mounts) + extra_toml)
    proc = start_vend(args=["--config", str(config), "--workers", "2"])
    _wait_for("two workers", lambda: len(_children(proc.pid)) == 2)
    return proc, config


def _toml(mounts: list[Path]) -> str:
    return "mounts = [" + ", ".join(f'"{m}"' for m in mounts) + "]\n"


def _cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def test_two_workers_share_the_port_and_the_metrics(tmp_path: Path, start_vend: Any) -> None:
    """With two workers both serve; every scrape, whichever worker answers, counts all requests."""
    mount = tmp_path / "m1"
    mount.mkdir()
    (mount / "a.txt").write_bytes(b"a")
    proc = start_vend([str(mount)], args=["--workers", "2"])
    workers = _wait_for(
        "two workers", lambda: len(_children(proc.pid)) == 2 and _children(proc.pid)
    )
    _health_by_pid(proc.url, workers)  # both serve
    cpu_before = {w: _cpu_ticks(w) for w in workers}
    for _ in range(100):
        with httpx.Client(base_url=proc.url, timeout=10) as client:  # a new connection each time
            assert client.get("/a.txt").content == b"a"
    served = [w for w in workers if _cpu_ticks(w) > cpu_before[w]]
    scrapes = []
    health = []
    for _ in range(6):
        with httpx.Client(base_url=proc.url, timeout=10) as client:
            scrapes.append(_total_200(client.get("/.well-known/vend/metrics").text))
            health.append(client.get("/.well-known/vend/health").json()["mounts"][0]["state"])
    assert served == workers, "both workers answered requests"
    assert all(s >= 100 for s in scrapes), scrapes
    assert health == ["up"] * 6


class _ClientLoop:
    """Requests in a thread until stopped (at most ``max_s`` seconds), checking every byte."""

    def __init__(self, name: str, request: Callable[[str], tuple[int, bytes]]) -> None:
        self.name = name
        self.request = request
        self.count = 0
        self.failures: list[str] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)

    def _run(self, max_s: float = 120.0, max_count: int = 1_000_000) -> None:
        deadline = time.monotonic() + max_s
        expected = {"/small.txt": SMALL, "/large.bin": LARGE}
        while not self.stop.is_set() and time.monotonic() < deadline and self.count < max_count:
            target = "/small.txt" if self.count % 2 else "/large.bin"
            try:
                status, body = self.request(target)
            except Exception as exc:
                self.failures.append(f"{self.name} {target}: {exc!r}")
                continue
            finally:
                self.count += 1
            if status != 200 or body != expected[target]:
                self.failures.append(f"{self.name} {target}: {status}, {len(body)} bytes")


class _RawKeepAlive:
    """One persistent connection: a request, then exactly Content-Length body bytes.

    Unlike a pooling client it never reconnects, so a connection the server closes is
    a failure.
    """

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.buffer = b""

    def get(self, target: str) -> tuple[int, bytes]:
        """Send one GET on the connection and read its whole response."""
        self.sock.sendall(f"GET {target} HTTP/1.1\r\nHost: vend.test\r\n\r\n".encode())
        while b"\r\n\r\n" not in self.buffer:
            self._receive()
        head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        fields = dict(line.lower().split(": ", 1) for line in lines[1:])
        length = int(fields["content-length"])
        while len(self.buffer) < length:
            self._receive()
        body, self.buffer = self.buffer[:length], self.buffer[length:]
        return int(lines[0].split()[1]), body

    def _receive(self) -> None:
        data = self.sock.recv(1 << 16)
        if not data:
            raise ConnectionError("the server closed the connection")
        self.buffer += data

    def close(self) -> None:
        """Close the connection."""
        self.sock.close()


def test_reloads_under_load_drop_nothing_and_keep_the_workers(
    tmp_path: Path, start_vend: Any
) -> None:
    """Four SIGHUPs under keep-alive and new-connection load: every response whole, same workers, new mount everywhere."""
    m1, m2 = tmp_path / "m1", tmp_path / "m2"
    for m in (m1, m2):
        m.mkdir()
    (m1 / "small.txt").write_bytes(SMALL)
    (m1 / "large.bin").write_bytes(LARGE)
    (m2 / "new.txt").write_bytes(NEW)
    proc, config = _start_workers(start_vend, tmp_path, [m1])
    workers = _children(proc.pid)
    _health_by_pid(proc.url, workers)

    keep_alive = httpx.Client(base_url=proc.url, timeout=30)

    def over_keep_alive(target: str) -> tuple[int, bytes]:
        response = keep_alive.get(target)
        return response.status_code, response.content

    def over_new_connection(target: str) -> tuple[int, bytes]:
        response = get_raw(proc.port, target.encode())
        return response.status, response.body

    raw = _RawKeepAlive(proc.port)
    loops = [
        _ClientLoop("httpx keep-alive", over_keep_alive),
        _ClientLoop("raw keep-alive", raw.get),
        _ClientLoop("raw new connections", over_new_connection),
    ]
    for loop in loops:
        loop.thread.start()

    def requests_made() -> None:
        """Wait until every client loop has had 5 more answers (a reload in between)."""
        marks = [loop.count for loop in loops]
        _wait_for(
            "5 more requests of every client loop",
            lambda: all(loop.count >= mark + 5 for loop, mark in zip(loops, marks, strict=True)),
            60,
        )

    try:
        for reload in range(1, 5):
            requests_made()
            if reload == 3:
                config.write_text(_toml([m1, m2]))
            os.kill(proc.pid, signal.SIGHUP)
            _wait_for(
                f"reload {reload} in every worker",
                lambda n=reload: all(
                    h["process"]["reloads"] == n for h in _health_by_pid(proc.url, workers).values()
                ),
            )
        requests_made()
    finally:
        for loop in loops:
            loop.stop.set()
        for loop in loops:
            loop.thread.join(30)
        keep_alive.close()
        raw.close()
    assert [f for loop in loops for f in loop.failures] == []
    assert all(loop.count >= 20 for loop in loops), [loop.count for loop in loops]
    assert _children(proc.pid) == workers, "no worker was replaced"
    for health in _health_by_pid(proc.url, workers).values():
        assert [m["name"] for m in health["mounts"]] == ["m1", "m2"]
        assert health["process"]["reloads"] == 4
    for response in _served_by_each(proc.url, workers, "/new.txt").values():
        assert (response.status_code, response.content) == (200, NEW)
    assert "reloaded settings: mounts m1, m2" in proc.output()


def test_a_killed_worker_is_replaced_while_the_other_serves(
    tmp_path: Path, start_vend: Any
) -> None:
    """SIGKILL of one worker: requests keep being answered, a new worker with the last valid settings takes its place, its gauges go."""
    mount, m2 = tmp_path / "m1", tmp_path / "m2"
    for m in (mount, m2):
        m.mkdir()
    (mount / "small.txt").write_bytes(SMALL)
    (m2 / "new.txt").write_bytes(NEW)
    proc, config = _start_workers(start_vend, tmp_path, [mount])
    first, second = _children(proc.pid)
    _health_by_pid(proc.url, [first, second])
    config.write_text(_toml([mount, m2]))
    os.kill(proc.pid, signal.SIGHUP)
    _wait_for("the reload", lambda: proc.output().count("reloaded settings") == 2)
    config.write_text("mounts = [")  # refused by every worker; m1 and m2 stay in force
    os.kill(proc.pid, signal.SIGHUP)
    _wait_for("the refusal", lambda: proc.output().count("reload refused") == 2)
    environ = Path(f"/proc/{first}/environ").read_bytes().split(b"\0")
    metrics_dir = Path(
        next(e for e in environ if e.startswith(b"PROMETHEUS_MULTIPROC_DIR="))
        .split(b"=", 1)[1]
        .decode()
    )
    assert list(metrics_dir.glob(f"gauge_livemin_{first}.db"))
    os.kill(first, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert get_raw(proc.port, b"/small.txt").body == SMALL
        workers = _children(proc.pid)
        if len(workers) == 2 and first not in workers:
            break
    replacement = next(w for w in _children(proc.pid) if w != second)
    answers = _health_by_pid(proc.url, [second, replacement])
    assert [m["name"] for m in answers[replacement]["mounts"]] == ["m1", "m2"]
    assert answers[replacement]["mounts"][0]["state"] == "up"
    new = _served_by_each(proc.url, [replacement], "/new.txt")[replacement]
    assert (new.status_code, new.content) == (200, NEW)
    assert not list(metrics_dir.glob(f"gauge_livemin_{first}.db")), "dead worker's gauges removed"
    assert "exited (SIGKILL)" in proc.output()


def test_sigterm_drains_every_worker_then_exits_0(tmp_path: Path, start_vend: Any) -> None:
    """SIGTERM to vend: every worker drains (health 503, files served), then exit 0, no worker left."""
    mount = tmp_path / "m1"
    mount.mkdir()
    (mount / "small.txt").write_bytes(SMALL)
    drain = "[timeouts]\ndrain_s = 6\n"
    proc, _ = _start_workers(start_vend, tmp_path, [mount], drain)
    workers = _children(proc.pid)
    _health_by_pid(proc.url, workers)
    environ = Path(f"/proc/{workers[0]}/environ").read_bytes().split(b"\0")
    metrics_dir = next(e for e in environ if e.startswith(b"PROMETHEUS_MULTIPROC_DIR="))
    os.kill(proc.pid, signal.SIGTERM)  # the parent only, as systemd's KillMode=mixed does
    # The supervisor passes the signal on: each worker answers "draining" once it has it.
    _wait_for(
        "every worker draining",
        lambda: all(
            health["status"] == "draining" for health in _health_by_pid(proc.url, workers).values()
        ),
        6,  # drain_s: after it the workers stop listening
    )
    response = get_raw(proc.port, b"/small.txt")
    assert (response.status, response.body) == (200, SMALL)
    assert proc.proc.wait(30) == 0, proc.output()
    assert [w for w in workers if Path(f"/proc/{w}").exists()] == []
    assert not Path(metrics_dir.split(b"=", 1)[1].decode()).exists()


@pytest.mark.parametrize("workers", ["1", "2"])
def test_port_in_use_exits_3(tmp_path: Path, workers: str) -> None:
    """An address already in use ends vend at once with status 3, never claiming to serve."""
    mount = tmp_path / "m1"
    mount.mkdir()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {k: v for k, v in os.environ.items() if not k.startswith("VEND_")}
        env["VEND_MOUNTS"] = f'["{mount}"]'
        result = subprocess.run(
            [str(VEND), "serve", "--port", str(port), "--workers", workers],
            env=env,
            capture_output=True,
            timeout=60,
        )
    assert result.returncode == 3, result.stderr
    assert b"serving" not in result.stderr, result.stderr
    assert b"address already in use" in result.stderr.lower(), result.stderr


def test_workers_with_an_unusable_access_log_exit_2_before_starting(tmp_path: Path) -> None:
    """With workers, an access log that cannot be opened is found by the main process before
    any worker starts: one line, status 2, no worker's traceback."""
    mount = tmp_path / "m1"
    mount.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("VEND_")}
    env["VEND_MOUNTS"] = f'["{mount}"]'
    env["VEND_ACCESS_LOG"] = str(tmp_path / "no-such-dir" / "access.log")
    result = subprocess.run(
        [str(VEND), "serve", "--port", str(free_port()), "--workers", "2"],
        env=env,
        capture_output=True,
        timeout=60,
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.count(b"\n") == 1 and b"access_log" in result.stderr
    assert b"Traceback" not in result.stderr and b"started" not in result.stderr


def test_a_removed_mount_leaves_every_workers_metrics(tmp_path: Path, start_vend: Any) -> None:
    """With two workers, after a reload without mount m1 no scrape (whichever worker) names m1."""
    m1, m2 = tmp_path / "m1", tmp_path / "m2"
    for m in (m1, m2):
        m.mkdir()
    (m1 / "small.txt").write_bytes(SMALL)
    (m2 / "new.txt").write_bytes(NEW)
    proc, config = _start_workers(start_vend, tmp_path, [m1, m2])
    workers = _children(proc.pid)
    _health_by_pid(proc.url, workers)
    for _ in range(20):  # new connections: lookups on both mounts in both workers
        assert get_raw(proc.port, b"/small.txt").status == 200
        assert get_raw(proc.port, b"/new.txt").status == 200
    with httpx.Client(base_url=proc.url, timeout=10) as client:
        assert 'mount="m1"' in client.get("/.well-known/vend/metrics").text
    config.write_text(_toml([m2]))
    os.kill(proc.pid, signal.SIGHUP)
    _wait_for(
        "the reload in every worker",
        lambda: all(
            h["process"]["reloads"] == 1 for h in _health_by_pid(proc.url, workers).values()
        ),
    )
    for _ in range(10):
        with httpx.Client(base_url=proc.url, timeout=10) as client:  # a new connection each time
            text = client.get("/.well-known/vend/metrics").text
        assert 'mount="m1"' not in text
        assert 'vend_mount_up{mount="m2"} 1.0' in text
        assert _total_200(text) >= 40


def test_sighup_while_starting_ends_nothing(tmp_path: Path) -> None:
    """SIGHUP every 50 ms to vend and its workers from their start until they serve: all live and serve.

    The spray starts with the first worker process: a Python process cannot guard its
    own first moments, before it runs vend's code.
    """
    from tests.support import VendProcess

    mount = tmp_path / "m1"
    mount.mkdir()
    (mount / "small.txt").write_bytes(SMALL)
    proc = VendProcess([str(mount)], args=["--workers", "2"])
    stop = threading.Event()
    rounds = [0]  # how many times every process was sent SIGHUP

    def hup_everyone() -> None:
        deadline = time.monotonic() + 120
        while not stop.is_set() and time.monotonic() < deadline:
            children = _children(proc.pid) if proc.proc is not None else []
            if children and proc.proc is not None and proc.proc.poll() is None:
                for pid in [proc.pid, *children]:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGHUP)
                rounds[0] += 1
            time.sleep(0.05)

    spammer = threading.Thread(target=hup_everyone, daemon=True)
    spammer.start()
    try:
        proc.start(tmp_path / "vend.log", timeout_s=30)
        workers = _wait_for(
            "two workers", lambda: len(_children(proc.pid)) == 2 and _children(proc.pid)
        )
        _health_by_pid(proc.url, workers)  # both serve
        serving_at = rounds[0]
        _wait_for("10 more SIGHUPs to both serving", lambda: rounds[0] >= serving_at + 10)
        stop.set()
        spammer.join(10)
        assert proc.proc is not None and proc.proc.poll() is None
        assert _children(proc.pid) == workers
        assert "exited" not in proc.output()
        assert get_raw(proc.port, b"/small.txt").body == SMALL
    finally:
        stop.set()
        proc.stop()


def _alive(pid: int) -> bool:
    """True while the process exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def test_workers_stop_when_the_main_process_is_killed(tmp_path: Path, start_vend: Any) -> None:
    """SIGKILL of vend's main process: its workers stop on their own and free the port."""
    mount = tmp_path / "m1"
    mount.mkdir()
    (mount / "small.txt").write_bytes(SMALL)
    proc, _ = _start_workers(start_vend, tmp_path, [mount])
    workers = _children(proc.pid)
    _health_by_pid(proc.url, workers)
    os.kill(proc.pid, signal.SIGKILL)
    _wait_for("the workers to stop", lambda: not any(_alive(w) for w in workers))
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", proc.port), timeout=5).close()
    assert "main process is gone" in proc.output()

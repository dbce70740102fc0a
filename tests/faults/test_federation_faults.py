"""Federation under faults: slow mounts stay up, priority holds, reloads change nothing.

Mount 1 is a faultfs FUSE mount (kernel caching off); mount 2 a plain directory holding an
*older* copy of each of mount 1's ``shadowed-N`` names and names of its own. What clients
receive is checked byte for byte: never the older copy of a name remembered to live on
mount 1, never a 5xx but 503, never a short body (httpx raises on one).

Each name has a directory of its own (``/m1-7/f.txt``), looked up once before a fault is
injected, and delays apply to the files only: libfuse before 3.16 makes the kernel
serialise first lookups within one directory (``tests/tools/faultfs.py``), which an NFS
mount does not, and a 300 ms delay would then queue every lookup behind the others.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support import wait_until

pytestmark = [
    pytest.mark.fuse,
    pytest.mark.skipif(
        not os.path.exists("/dev/fuse") or shutil.which("fusermount3") is None,
        reason="needs /dev/fuse and fusermount3 (tests/run installs fuse3)",
    ),
]

SHADOWED = 24
OWN = 400


def _trees(tmp_path: Path) -> tuple[Path, Path]:
    src1, m2 = tmp_path / "src1", tmp_path / "m2"
    src1.mkdir()
    m2.mkdir()
    files = [(src1, f"shadowed-{i}", f"m1 copy {i}") for i in range(SHADOWED)]
    files += [(m2, f"shadowed-{i}", f"older m2 copy {i}") for i in range(SHADOWED)]
    files += [(src1, f"m1-{i}", f"only m1 {i}") for i in range(OWN)]
    files += [(m2, f"m2-{i}", f"only m2 {i}") for i in range(OWN)]
    for root, folder, body in files:
        (root / folder).mkdir()
        (root / folder / "f.txt").write_bytes(body.encode())
    return src1, m2


def _walk(fs: Any) -> None:
    """Look every name up once, so the kernel revalidates them later (see above)."""
    for folder in os.listdir(fs.mountpoint):
        os.stat(fs.mountpoint / folder / "f.txt")


def _kind(name: str) -> str:
    return name.split("/")[1].rpartition("-")[0]


def _expected(name: str) -> bytes:
    kind, _, number = name.split("/")[1].rpartition("-")
    return {"shadowed": b"m1 copy ", "m1": b"only m1 ", "m2": b"only m2 "}[kind] + number.encode()


def _metric(proc: Any, name: str, mount: str) -> float | None:
    with proc.client() as client:
        text = client.get("/.well-known/vend/metrics").text
    found = re.search(rf'^{name}{{mount="{mount}"}} (\S+)$', text, re.M)
    return float(found.group(1)) if found else None


def _states(proc: Any) -> dict[str, str]:
    with proc.client() as client:
        data = client.get("/.well-known/vend/health").json()
    return {m["name"]: m["state"] for m in data["mounts"]}


async def _load(
    url: str, names: list[str], clients: int, duration_s: float, on_tick: Any = None
) -> Counter[tuple[str, int, str]]:
    """``clients`` clients cycle over ``names`` for ``duration_s`` seconds.

    Returns:
        Counts of (name kind, status, what the body was: ``right``, ``older``, ``other``).
    """
    seen: Counter[tuple[str, int, str]] = Counter()
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=30, limits=limits) as client:
        end = time.monotonic() + duration_s

        async def worker(offset: int) -> None:
            i = offset
            while time.monotonic() < end:
                name = names[i % len(names)]
                i += clients
                response = await client.get(name)
                body = response.content
                what = "right" if body == _expected(name) else "other"
                if b"older" in body:
                    what = "older"
                seen[(_kind(name), response.status_code, what)] += 1

        async def ticker() -> None:
            while on_tick is not None and time.monotonic() < end:
                await asyncio.sleep(0.5)
                await asyncio.to_thread(on_tick)

        await asyncio.gather(ticker(), *(worker(i) for i in range(clients)))
    return seen


def _watch(proc: Any, seen_up: list[float], seen_states: set[str]) -> Any:
    def tick() -> None:
        up = _metric(proc, "vend_mount_up", "m1")
        if up is not None:
            seen_up.append(up)
        seen_states.add(_states(proc)["m1"])

    return tick


@pytest.mark.parametrize("step", [False, True], ids=["slow-from-start", "steps-to-slow"])
def test_slow_mount_is_never_down(
    tmp_path: Path, start_vend: Any, faultfs: Any, step: bool
) -> None:
    """A mount at 300 ms per operation, from the start or stepping from 1 ms, under 32
    concurrent clients: its names are served (remembered ones never from the older copy),
    no 503, vend_mount_up never 0, health never ``down``."""
    src1, m2 = _trees(tmp_path)
    fs = faultfs(src1)
    _walk(fs)
    fs.inject("*", "/*/f.txt", "delay", seconds=0.001 if step else 0.3)
    proc = start_vend(
        [{"path": str(fs.mountpoint), "name": "m1"}, {"path": str(m2), "name": "m2"}],
        {
            "cache": {"ttl_s": 0.3, "miss_ttl_s": 0.2},
            "timeouts": {"probe_interval_s": 0.5},
        },
    )
    # A slow mount's first lookups are late (its deadline starts at the floor): names
    # only it holds are waited for, and teach vend its pace; then the shadowed names are
    # served from it, and remembered there.
    warm = asyncio.run(_load(proc.url, [f"/m1-{i}/f.txt" for i in range(16)], 16, 0.1))
    assert {(s, w) for _, s, w in warm} == {(200, "right")}, warm
    shadowed = [f"/shadowed-{i}/f.txt" for i in range(SHADOWED)]
    warm = asyncio.run(_load(proc.url, shadowed, SHADOWED, 0.1))
    assert {(s, w) for _, s, w in warm} == {(200, "right")}, warm
    if step:
        fs.lift()
        fs.inject("*", "/*/f.txt", "delay", seconds=0.3)
    names = [
        name
        for i in range(SHADOWED)
        for name in (f"/shadowed-{i}/f.txt", f"/m1-{i}/f.txt", f"/m2-{i}/f.txt")
    ]
    seen_up: list[float] = []
    seen_states: set[str] = set()
    seen = asyncio.run(_load(proc.url, names, 32, 12.0, _watch(proc, seen_up, seen_states)))
    with proc.client() as client:
        lookups = re.findall(
            r"^vend_mount_lookups_total.*", client.get("/.well-known/vend/metrics").text, re.M
        )
    assert {(status, what) for (_, status, what) in seen} == {(200, "right")}, (
        seen,
        lookups,
        proc.output()[-3000:],
    )
    assert {kind for kind, _, _ in seen} == {"shadowed", "m1", "m2"}, seen
    assert seen_up and min(seen_up) == 1.0, seen_up
    assert "down" not in seen_states, seen_states
    assert "mount m1 is down" not in proc.output()


FAULTS = {
    "hang": [("*", "*", "hang", {})],
    "slow": [("*", "/*/f.txt", "delay", {"seconds": 0.3})],
    "eio": [("*", "*", "EIO", {})],
    "estale": [("*", "*", "ESTALE", {})],
    "flapping": [],  # hang and lift in turn, every 2 s (see below)
}


@pytest.mark.parametrize("fault", list(FAULTS))
def test_reload_during_a_fault_changes_nothing_clients_receive(
    tmp_path: Path, start_vend: Any, faultfs: Any, fault: str
) -> None:
    """While mount 1 fails (hang, slow, EIO, ESTALE, flapping) and SIGHUP comes every
    1.5 s (adding and removing a third mount): names remembered on mount 1 get its copy or
    503, never mount 2's older copy; mount 2's names are always served; other statuses
    never appear; health and vend_mount_up match the fault afterwards."""
    src1, m2 = _trees(tmp_path)
    m3 = tmp_path / "m3"
    m3.mkdir()
    fs = faultfs(src1)
    config = tmp_path / "vend.toml"
    base = "[timeouts]\nprobe_interval_s = 0.5\n[cache]\nttl_s = 0.3\nmiss_ttl_s = 0.2\n"
    tables = [
        f'mounts = [{{path = "{fs.mountpoint}", name = "m1"}}, "{m2}"]\n',
        f'mounts = [{{path = "{fs.mountpoint}", name = "m1"}}, "{m2}", "{m3}"]\n',
    ]
    config.write_text(tables[0] + base)
    proc = start_vend(None, args=["--config", str(config)])
    shadowed = [f"/shadowed-{i}/f.txt" for i in range(SHADOWED)]
    with proc.client() as client:
        for name in shadowed:  # now remembered to live on m1
            assert client.get(name).content == _expected(name)
    _walk(fs)
    for op, path, kind, extra in FAULTS[fault]:
        fs.inject(op, path, kind, **extra)
    reloads = 0
    hung = False

    def tick() -> None:
        nonlocal reloads, hung
        reloads += 1
        if reloads % 3 == 0:
            config.write_text(tables[(reloads // 3) % 2] + base)
            os.kill(proc.pid, signal.SIGHUP)
        if fault == "flapping" and reloads % 4 == 0:
            if hung:
                fs.lift()
            else:
                fs.inject("*", "*", "hang")
            hung = not hung

    names = shadowed + [f"/m2-{i}/f.txt" for i in range(64)]
    seen = asyncio.run(_load(proc.url, names, 16, 12.0, tick))
    if fault in ("hang", "eio", "estale"):  # health and metrics say so, after the reloads
        deadline = time.monotonic() + 10
        while _states(proc)["m1"] != "down" or _metric(proc, "vend_mount_up", "m1") != 0.0:
            assert time.monotonic() < deadline, "mount 1 shown down"
            time.sleep(0.2)
    if fault == "slow":
        assert _states(proc)["m1"] != "down"
        assert _metric(proc, "vend_mount_up", "m1") == 1.0
    fs.lift()
    assert reloads >= 12, reloads
    wait_until(lambda: proc.output().count("reloaded settings") >= 3, 30, "3 reloads logged")
    outcomes = {(kind, status, what) for (kind, status, what) in seen}
    assert all(what != "older" for _, _, what in outcomes), seen
    assert {(s, w) for k, s, w in outcomes if k == "m2"} == {(200, "right")}, seen
    assert {(s, w) for k, s, w in outcomes if k == "shadowed"} <= {(200, "right"), (503, "other")}
    if fault in ("hang", "eio", "estale"):
        assert (503, "other") in {(s, w) for k, s, w in outcomes if k == "shadowed"}, seen
    if fault == "slow":
        assert {(s, w) for k, s, w in outcomes if k == "shadowed"} == {(200, "right")}, seen
    deadline = time.monotonic() + 15
    while _states(proc)["m1"] != "up" or _metric(proc, "vend_mount_up", "m1") != 1.0:
        assert time.monotonic() < deadline, "mount 1 healthy again after the lift"
        time.sleep(0.2)
    with proc.client() as client:
        for name in shadowed[:4]:
            assert client.get(name).content == _expected(name)


def _worker_pids(url: str, wanted: int = 2, attempts: int = 400) -> list[int]:
    """The process ids of ``wanted`` workers, asked on new connections."""
    pids: set[int] = set()
    for _ in range(attempts):
        with httpx.Client(base_url=url, timeout=30) as client:
            pids.add(client.get("/.well-known/vend/health").json()["process"]["pid"])
        if len(pids) == wanted:
            return sorted(pids)
        time.sleep(0.02)
    raise AssertionError(f"only workers {sorted(pids)} answered")


def _get_on_worker(url: str, pid: int, name: str, attempts: int = 400) -> httpx.Response:
    """GET ``name`` on a new connection that worker ``pid`` accepted."""
    for _ in range(attempts):
        with httpx.Client(base_url=url, timeout=30) as client:
            if client.get("/.well-known/vend/health").json()["process"]["pid"] == pid:
                return client.get(name)
    raise AssertionError(f"worker {pid} accepted none of {attempts} connections")


async def _load_fresh_and_kept(
    url: str, names: list[str], clients: int, duration_s: float, on_tick: Any
) -> Counter[tuple[str, int, str]]:
    """Like ``_load``, half the clients on kept-alive connections and half on a new
    connection per request (so both workers answer)."""
    seen: Counter[tuple[str, int, str]] = Counter()
    kept = httpx.AsyncClient(base_url=url, timeout=30)
    fresh = httpx.AsyncClient(
        base_url=url, timeout=30, limits=httpx.Limits(max_keepalive_connections=0)
    )
    end = time.monotonic() + duration_s

    async def worker(offset: int) -> None:
        client = kept if offset % 2 else fresh
        i = offset
        while time.monotonic() < end:
            name = names[i % len(names)]
            i += clients
            response = await client.get(name)
            what = "right" if response.content == _expected(name) else "other"
            if b"older" in response.content:
                what = "older"
            seen[(_kind(name), response.status_code, what)] += 1

    async def ticker() -> None:
        while time.monotonic() < end:
            await asyncio.sleep(0.5)
            await asyncio.to_thread(on_tick)

    async with kept, fresh:
        await asyncio.gather(ticker(), *(worker(i) for i in range(clients)))
    return seen


@pytest.mark.parametrize("fault", ["eio", "hang"])
def test_two_workers_share_where_names_live(
    tmp_path: Path, start_vend: Any, faultfs: Any, fault: str
) -> None:
    """With --workers 2, each shadowed name served from mount 1 by one worker only: once
    mount 1 fails (EIO, hang), every request for them on either worker, on new and kept
    connections, through two reloads (one adding a mount), gets 503, never mount 2's older
    copy; mount 2's own names are served throughout."""
    src1, m2 = _trees(tmp_path)
    m3 = tmp_path / "m3"
    m3.mkdir()
    fs = faultfs(src1)
    config = tmp_path / "vend.toml"
    base = (
        "[timeouts]\nprobe_interval_s = 0.5\nfs_op_s = 1.0\n"
        "[cache]\nttl_s = 0.3\nmiss_ttl_s = 0.2\n"
    )
    table = f'mounts = [{{path = "{fs.mountpoint}", name = "m1"}}, "{m2}"'
    config.write_text(table + "]\n" + base)
    proc = start_vend(None, args=["--config", str(config), "--workers", "2"])
    workers = _worker_pids(proc.url)
    shadowed = [f"/shadowed-{i}/f.txt" for i in range(SHADOWED)]
    for i, name in enumerate(shadowed):  # name i is served by worker i % 2 only
        response = _get_on_worker(proc.url, workers[i % 2], name)
        assert response.content == _expected(name)
    _walk(fs)
    fs.inject("*", "*", "hang" if fault == "hang" else "EIO")
    time.sleep(1.0)  # past cache.ttl_s: the cached copies are stale now
    ticks = 0

    def tick() -> None:
        nonlocal ticks
        ticks += 1
        if ticks in (4, 12):  # a reload adding mount 3, then one removing it
            config.write_text(table + (f', "{m3}"]\n' if ticks == 4 else "]\n") + base)
            os.kill(proc.pid, signal.SIGHUP)

    names = shadowed + [f"/m2-{i}/f.txt" for i in range(64)]
    seen = asyncio.run(_load_fresh_and_kept(proc.url, names, 16, 10.0, tick))
    fs.lift()
    # 2 reloads x 2 workers
    wait_until(lambda: proc.output().count("reloaded settings") >= 4, 30, "4 reloads logged")
    outcomes = {(kind, status, what) for (kind, status, what) in seen}
    assert {(s, w) for k, s, w in outcomes if k == "shadowed"} == {(503, "other")}, seen
    assert {(s, w) for k, s, w in outcomes if k == "m2"} == {(200, "right")}, seen
    served = sum(n for (kind, _, _), n in seen.items() if kind == "shadowed")
    assert served >= 2 * SHADOWED, seen

"""vend serve --workers N: every worker serves, metrics add up across workers."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import httpx
import pytest

pytestmark = pytest.mark.live


def _total_200(text: str) -> float:
    match = re.search(r'^vend_requests_total\{status="200"\} (\S+)$', text, re.M)
    return float(match.group(1)) if match else 0.0


def _children(pid: int) -> list[int]:
    """uvicorn's worker processes (multiprocessing's spawn_main), not its resource tracker."""
    children = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        children += [int(c) for c in (task / "children").read_text().split()]
    return [c for c in children if b"spawn_main" in Path(f"/proc/{c}/cmdline").read_bytes()]


def test_two_workers_share_the_port_and_the_metrics(tmp_path: Path, start_vend: Any) -> None:
    """With two workers both serve; every scrape, whichever worker answers, counts all requests."""
    mount = tmp_path / "m1"
    mount.mkdir()
    (mount / "a.txt").write_bytes(b"a")
    proc = start_vend([str(mount)], args=["--workers", "2"])
    deadline = 50
    while len(_children(proc.pid)) < 2 and deadline:
        deadline -= 1
        httpx.get(proc.url + "/a.txt", timeout=10)
    workers = _children(proc.pid)
    assert len(workers) == 2
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


def _cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])

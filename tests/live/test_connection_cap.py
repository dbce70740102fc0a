"""Descriptors and the connection cap, against a real ``vend serve`` under a low limit."""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
from pathlib import Path

import pytest

from tests.support import VEND, VendProcess, get_raw, wait_until

pytestmark = pytest.mark.live


def _metric(port: int, name: str) -> float:
    text = get_raw(port, b"/.well-known/vend/metrics").body.decode()
    match = re.search(rf"^{name} (\S+)$", text, re.M)
    return float(match.group(1)) if match else 0.0


def _cpu_s(pid: int) -> float:
    """User plus system CPU time of a process so far, in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _health(port: int) -> list[str]:
    data = json.loads(get_raw(port, b"/.well-known/vend/health").body)
    return [m["state"] for m in data["mounts"]]


@pytest.mark.parametrize("cap", [None, 20], ids=["cap-from-fd-limit", "cap-set-below"])
def test_idle_connections_past_the_limit_never_take_mounts_down(
    tmp_path: Path, cap: int | None
) -> None:
    """More idle connections than the descriptor limit allows: the cap closes the extra
    ones at once (counted), no mount is ever down, and once they go the next request is
    200."""
    mount = tmp_path / "m1"
    mount.mkdir()
    (mount / "a.txt").write_bytes(b"a\n")
    settings = {} if cap is None else {"limits": {"max_connections": cap}}
    vend = VendProcess(
        [str(mount)],
        settings,
        command=["prlimit", "--nofile=128:128", "--", str(VEND), "serve", "--port", "{port}"],
    )
    vend.start(tmp_path / "vend.log")
    held: list[socket.socket] = []
    try:
        assert get_raw(vend.port, b"/a.txt").status == 200
        cpu_before = _cpu_s(vend.pid)
        for _ in range(200):
            with contextlib.suppress(OSError):
                held.append(socket.create_connection(("127.0.0.1", vend.port), timeout=10))
        # The refusals are counted; closed connections read EOF or a reset.
        for sock in held[-5:]:
            sock.settimeout(10)
            with contextlib.suppress(OSError):
                assert sock.recv(1) == b""
        for sock in held:
            sock.close()
        held.clear()
        # No spinning while the descriptors were taken: a generous bound for 200 accepts.
        assert _cpu_s(vend.pid) - cpu_before < 5.0
        refused = wait_until(
            lambda: _metric(vend.port, "vend_connections_refused_total"), 30, "refusals counted"
        )
        assert refused >= 200 - (cap or 128)
        assert _health(vend.port) == ["up"]
        assert get_raw(vend.port, b"/a.txt").status == 200
        assert "is down" not in vend.output()
        assert "descriptor limit (RLIMIT_NOFILE): 128" in vend.output()
    finally:
        for sock in held:
            sock.close()
        vend.stop()
    assert VEND.exists()

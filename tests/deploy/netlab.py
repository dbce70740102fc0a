"""Helpers for the deploy/ tests: network namespaces, the processes in them, and vend.

Every address used here lives inside namespaces a test creates (10.231.0.0/16)
or on loopback; nothing is routed out of them. The ``lab`` fixture removes all
it made, in reverse order, even when the test fails.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
SAMPLE_MOUNT = REPO / "examples" / "mounts" / "server1"

needs_root = pytest.mark.skipif(
    os.geteuid() != 0, reason="creates network namespaces and mounts: needs root"
)
needs_fuse = pytest.mark.skipif(
    not Path("/dev/fuse").exists(), reason="mounts sshfs: needs /dev/fuse"
)


def vend_command() -> list[str]:
    """Return the argv prefix that runs vend's CLI from this test environment.

    Prefers the console script beside the running interpreter (``.venv/bin/vend``
    under ``tests/run``), then one on PATH, then ``python -m app.cli``.
    """
    beside = Path(sys.executable).with_name("vend")
    if beside.exists():
        return [str(beside)]
    found = shutil.which("vend")
    if found:
        return [found]
    return [sys.executable, "-m", "app.cli"]


def clean_env() -> dict[str, str]:
    """Return this process's environment without VEND_* settings or proxy variables.

    A stray VEND_MOUNTS would change what vend serves, and a proxy variable
    would send a client's request somewhere other than the namespace address.
    """
    return {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("VEND_") and "proxy" not in k.lower()
    }


def write_vend_config(path: Path, mount: Path, access_log: Path) -> Path:
    """Write a vend TOML settings file serving ``mount`` and logging to ``access_log``."""
    path.write_text(f'mounts = ["{mount}"]\naccess_log = "{access_log}"\n')
    return path


class Lab:
    """Network namespaces, processes and FUSE mounts made by one test.

    Names carry a random per-test tag, so concurrent runs never collide:
    namespaces are ``vdt<tag>-<role>``, interfaces ``<tag><role>`` (at most 15
    characters, the kernel's limit). ``close`` removes everything.

    Args:
        tmp: a directory for logs and generated files.
    """

    def __init__(self, tmp: Path) -> None:
        self.tag = secrets.token_hex(3)[:5]
        self.tmp = tmp
        self.namespaces: list[str] = []
        self.processes: list[subprocess.Popen[bytes]] = []
        self.mounts: list[Path] = []
        self.cleanups: list[Callable[[], object]] = []

    def netns(self, role: str) -> str:
        """Create a namespace with loopback up; return its name."""
        name = f"vdt{self.tag}-{role}"
        subprocess.run(["ip", "netns", "add", name], check=True)
        self.namespaces.append(name)
        self.ip(name, "link", "set", "lo", "up")
        return name

    def ifname(self, role: str) -> str:
        """Return an interface name for ``role`` with this lab's tag."""
        name = f"{self.tag}{role}"
        assert len(name) <= 15, name
        return name

    def ip(self, ns: str, *args: str) -> str:
        """Run ``ip -n NS ARGS``; return its stdout; raise CalledProcessError on failure."""
        proc = subprocess.run(
            ["ip", "-n", ns, *args], capture_output=True, text=True, check=True, timeout=10
        )
        return proc.stdout

    def veth(self, ns_a: str, name_a: str, ns_b: str, name_b: str) -> None:
        """Create a veth pair with one end in each namespace, both up."""
        self.ip(ns_a, "link", "add", name_a, "type", "veth", "peer", "name", name_b, "netns", ns_b)
        self.ip(ns_a, "link", "set", name_a, "up")
        self.ip(ns_b, "link", "set", name_b, "up")

    def run(
        self, ns: str, *cmd: str, timeout: float = 30, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """Run a command inside ``ns`` to completion (``ip netns exec``)."""
        return subprocess.run(
            ["ip", "netns", "exec", ns, *cmd],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=check,
            env=clean_env(),
        )

    def spawn(self, cmd: list[str], log: Path) -> subprocess.Popen[bytes]:
        """Start a long-running command in its own process group, output to ``log``.

        Wrap ``cmd`` with ``ip netns exec NS`` or ``nsenter`` to place it in a namespace.
        """
        with log.open("ab") as out:
            proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env=clean_env(),
            )
        self.processes.append(proc)
        return proc

    def on_close(self, cleanup: Callable[[], object]) -> None:
        """Have ``close`` call ``cleanup`` first (e.g. ``netplumb down``), before anything else."""
        self.cleanups.append(cleanup)

    def pids(self, ns: str) -> list[int]:
        """Return the PIDs of the processes in ``ns`` (``ip netns pids``)."""
        out = subprocess.run(
            ["ip", "netns", "pids", ns], capture_output=True, text=True, check=False, timeout=10
        ).stdout
        return [int(pid) for pid in out.split()]

    def track_mount(self, path: Path) -> None:
        """Have ``close`` unmount this FUSE mount point."""
        self.mounts.append(path)

    def curl(self, ns: str, url: str, *extra: str, timeout_s: float = 10) -> tuple[int, bytes]:
        """GET ``url`` from inside ``ns``; return (status, body). Status 0: no response."""
        body = self.tmp / f"body-{secrets.token_hex(4)}"
        proc = self.run(
            ns,
            "curl",
            "--silent",
            "--noproxy",
            "*",
            "--max-time",
            str(timeout_s),
            "--output",
            str(body),
            "--write-out",
            "%{http_code}",
            *extra,
            url,
            timeout=timeout_s + 5,
            check=False,
        )
        data = body.read_bytes() if body.exists() else b""
        return int(proc.stdout or 0), data

    def wait_http(self, ns: str, url: str, proc: subprocess.Popen[bytes], log: Path) -> None:
        """Wait (at most 30 s) until ``url`` answers from ``ns``; fail if ``proc`` exits."""
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                pytest.fail(f"server exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            status, _ = self.curl(ns, url, timeout_s=2)
            if status:
                return
            time.sleep(0.2)
        pytest.fail(f"{url} did not answer within 30 s:\n{log.read_text()[-3000:]}")

    def links(self, ns: str) -> list[str]:
        """Return the interface names in ``ns``."""
        out = self.ip(ns, "-o", "link", "show")
        return [line.split(":")[1].strip().split("@")[0] for line in out.splitlines()]

    def close(self) -> list[str]:
        """Unmount, stop processes, kill what is left in the namespaces, delete them.

        Returns:
            One line per step that failed (every step is tried regardless).
        """
        errors: list[str] = []
        for cleanup in reversed(self.cleanups):
            try:
                cleanup()
            except Exception as exc:  # keep going: the rest must still be removed
                errors.append(f"cleanup {cleanup!r}: {exc!r}")
        for mount in reversed(self.mounts):
            done = subprocess.run(
                ["fusermount3", "-u", "-z", str(mount)], capture_output=True, text=True, check=False
            )
            if done.returncode != 0 and "not found in" not in done.stderr:
                errors.append(f"fusermount3 -u {mount}: {done.stderr.strip()}")
        for proc in reversed(self.processes):
            stop_group(proc)
        # Whatever is left in the namespaces was started by this test (netplumb's
        # supervisor, udhcpc, sshfs's ssh): SIGTERM first, so that the supervisor
        # stops the udhcpc it runs, then SIGKILL after at most 5 s.
        for sig in (signal.SIGTERM, signal.SIGKILL):
            left = [pid for ns in self.namespaces for pid in self.pids(ns)]
            for pid in left:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
            deadline = time.monotonic() + 5
            while left and time.monotonic() < deadline:
                left = [pid for ns in self.namespaces for pid in self.pids(ns)]
                time.sleep(0.05)
        for ns in reversed(self.namespaces):
            done = subprocess.run(
                ["ip", "netns", "del", ns], capture_output=True, text=True, check=False
            )
            if done.returncode != 0:
                errors.append(f"ip netns del {ns}: {done.stderr.strip()}")
        return errors


def stop_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM a process group, wait up to 5 s, then SIGKILL it."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=5)

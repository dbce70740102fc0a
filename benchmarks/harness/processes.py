"""Server processes: start pinned to a core in their own process group, and stop.

Every server is started with ``start_new_session=True``, so its process group id equals
its pid and holds every worker it forks (Apache's children, nginx's worker, granian's
workers). Measurement (``harness.procstat``) and shutdown address the whole group. Each
group id is also written to a registry file that ``benchmarks/compare`` (bash) reads in
its exit trap, so the servers die even when the Python harness itself is killed.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from harness.cgroups import CpuCgroup
from harness.procstat import group_members, schedstat_cpu_s

STOP_GRACE_S: Final = 10.0


@dataclass
class ServerProcess:
    """A started server and where its output goes.

    Attributes:
        name: short name for messages.
        popen: the leader process; its pid is also the process group id.
        log_path: file receiving the server's stdout and stderr.
        cgroup: the control group counting its CPU time, or None (then /proc is used).
    """

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    cgroup: CpuCgroup | None = None

    @property
    def pgid(self) -> int:
        """The process group id (the leader's pid)."""
        return self.popen.pid

    def read_cpu_s(self) -> float:
        """Returns the CPU seconds (user + system) the server has used so far.

        From its control group when it has one (every process and thread, exited ones
        too), else from the schedstat of its live threads.

        Returns:
            Seconds since it started; compare two readings for a measurement.
        """
        if self.cgroup is not None:
            with contextlib.suppress(OSError):
                return self.cgroup.read_cpu_s()
        return schedstat_cpu_s([self.pgid])


@dataclass
class Registry:
    """The file of process group ids that the bash entry's exit trap kills.

    Attributes:
        path: one pgid per line; rewritten on every change.
    """

    path: Path
    pgids: set[int] = field(default_factory=set)

    def reset(self) -> None:
        """Empties the registry (at the start of a run)."""
        self.pgids.clear()
        self._write()

    def add(self, pgid: int) -> None:
        """Records a started group. Args: pgid: the group id."""
        self.pgids.add(pgid)
        self._write()

    def discard(self, pgid: int) -> None:
        """Forgets a stopped group. Args: pgid: the group id."""
        self.pgids.discard(pgid)
        self._write()

    def _write(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text("".join(f"{pgid}\n" for pgid in sorted(self.pgids)))


def start_server(
    name: str,
    argv: list[str],
    *,
    cpu: int,
    log_path: Path,
    registry: Registry,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    cgroup: CpuCgroup | None = None,
) -> ServerProcess:
    """Starts ``argv`` under ``taskset -c cpu`` in a new session, in ``cgroup`` if given.

    The shell joins the control group and execs taskset, which execs the command, so the
    leader's pid is the server's own, and every process it forks inherits the group and
    the CPU affinity from the start.

    Args:
        name: short name for messages and the log file.
        argv: the server command line.
        cpu: the core the server and its children may run on.
        log_path: file for the server's stdout and stderr (truncated).
        registry: where the new group id is recorded for the exit trap.
        env: the environment (default: the harness's own).
        cwd: working directory (default: the harness's).
        cgroup: control group to run in, for CPU accounting.

    Returns:
        The started process.

    Raises:
        OSError: when the command cannot be executed.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    command = ["taskset", "-c", str(cpu), *argv]
    if cgroup is not None:
        join = 'echo $$ > "$1" && shift && exec "$@"'
        command = ["sh", "-c", join, "sh", str(cgroup.procs_file), *command]
    with log_path.open("wb") as log:
        popen = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=env,
            cwd=cwd,
        )
    registry.add(popen.pid)
    return ServerProcess(name, popen, log_path, cgroup)


def stop_server(server: ServerProcess, registry: Registry) -> None:
    """Stops a server's whole process group: SIGTERM, then SIGKILL after a grace period.

    Args:
        server: the server to stop.
        registry: forgets the group once it is gone.
    """
    pgid = server.pgid
    _signal_group(pgid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE_S
    while time.monotonic() < deadline and group_members(pgid):
        with contextlib.suppress(subprocess.TimeoutExpired):
            server.popen.wait(timeout=0.1)
    if group_members(pgid):
        _signal_group(pgid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        server.popen.wait(timeout=STOP_GRACE_S)
    registry.discard(pgid)
    if server.cgroup is not None:
        server.cgroup.remove()


def _signal_group(pgid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signum)


def free_port() -> int:
    """Returns a TCP port on 127.0.0.1 that was free a moment ago.

    Returns:
        The port number.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_for_port(port: int, server: ServerProcess, *, timeout_s: float = 30.0) -> None:
    """Waits until 127.0.0.1:port accepts connections.

    Args:
        port: the TCP port.
        server: the process expected to listen; its early exit ends the wait.
        timeout_s: upper bound on the wait, in seconds.

    Raises:
        RuntimeError: if the server exits first or the port stays closed for ``timeout_s``;
            the message ends with the tail of the server's log.
    """
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.popen.poll() is not None:
            raise RuntimeError(
                f"{server.name} exited with {server.popen.returncode}: {log_tail(server.log_path)}"
            )
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.1)
    raise RuntimeError(
        f"{server.name} did not listen on port {port} within {timeout_s:.0f} s: "
        f"{log_tail(server.log_path)}"
    )


def wait_for_unix_socket(path: Path, server: ServerProcess, *, timeout_s: float = 30.0) -> None:
    """Waits until a Unix socket accepts connections.

    Args:
        path: the socket file.
        server: the process expected to listen; its early exit ends the wait.
        timeout_s: upper bound on the wait, in seconds.

    Raises:
        RuntimeError: if the server exits first or the socket stays closed for ``timeout_s``.
    """
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.popen.poll() is not None:
            raise RuntimeError(
                f"{server.name} exited with {server.popen.returncode}: {log_tail(server.log_path)}"
            )
        with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX) as probe:
            probe.settimeout(0.5)
            probe.connect(str(path))
            return
        time.sleep(0.1)
    raise RuntimeError(
        f"{server.name} did not listen on {path} within {timeout_s:.0f} s: "
        f"{log_tail(server.log_path)}"
    )


def wait_for_settled_group(
    pgids: list[int], *, stable_s: float = 1.0, timeout_s: float = 30.0
) -> int:
    """Waits until the number of processes in some groups stops changing.

    Servers that fork their workers after they start listening (Apache prefork starting
    256 children, granian spawning its worker) would otherwise still be forking during
    the first measurement.

    Args:
        pgids: the process groups.
        stable_s: how long the count must stay the same, in seconds.
        timeout_s: upper bound on the wait, in seconds; the count is returned anyway.

    Returns:
        The final number of processes.
    """
    deadline = time.monotonic() + timeout_s
    count = sum(len(group_members(pgid)) for pgid in pgids)
    stable_since = time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.2)
        now_count = sum(len(group_members(pgid)) for pgid in pgids)
        if now_count != count:
            count, stable_since = now_count, time.monotonic()
        elif time.monotonic() - stable_since >= stable_s:
            break
    return count


def log_tail(path: Path, *, max_bytes: int = 600) -> str:
    """Returns the last ``max_bytes`` of a log file as one line, for error messages.

    Args:
        path: the log file.
        max_bytes: how much of its end to keep.

    Returns:
        The tail with newlines replaced by " | ", or "(no log)".
    """
    try:
        data = path.read_bytes()[-max_bytes:]
    except OSError:
        return "(no log)"
    return data.decode(errors="replace").strip().replace("\n", " | ") or "(empty log)"

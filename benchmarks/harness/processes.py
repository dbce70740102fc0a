"""Server processes: start pinned to a core in their own process group, measure, stop.

Every server is started with ``start_new_session=True``, so its process group id equals
its pid and holds every worker it forks (Apache's children, nginx's worker, granian's
workers). Measurement and shutdown address the whole group. Each group id is also written
to a registry file that ``benchmarks/compare`` (bash) reads in its exit trap, so the
servers die even when the Python harness itself is killed.

CPU time comes from ``/proc/PID/stat`` (utime + stime + cutime + cstime, in clock ticks);
memory from ``/proc/PID/status`` (VmRSS) and ``/proc/PID/smaps_rollup`` (Pss).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

CLOCK_TICKS_PER_S: Final = os.sysconf("SC_CLK_TCK")
STOP_GRACE_S: Final = 10.0
MEMORY_SAMPLE_INTERVAL_S: Final = 0.5


@dataclass
class ServerProcess:
    """A started server and where its output goes.

    Attributes:
        name: short name for messages.
        popen: the leader process; its pid is also the process group id.
        log_path: file receiving the server's stdout and stderr.
    """

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pgid(self) -> int:
        """The process group id (the leader's pid)."""
        return self.popen.pid


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
) -> ServerProcess:
    """Starts ``argv`` under ``taskset -c cpu`` in a new session.

    taskset execs the command, so the leader's pid is the server's own and every process
    it forks inherits the CPU affinity.

    Args:
        name: short name for messages and the log file.
        argv: the server command line.
        cpu: the core the server and its children may run on.
        log_path: file for the server's stdout and stderr (truncated).
        registry: where the new group id is recorded for the exit trap.
        env: the environment (default: the harness's own).
        cwd: working directory (default: the harness's).

    Returns:
        The started process.

    Raises:
        OSError: when the command cannot be executed.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("wb") as log:
        popen = subprocess.Popen(
            ["taskset", "-c", str(cpu), *argv],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=env,
            cwd=cwd,
        )
    registry.add(popen.pid)
    return ServerProcess(name, popen, log_path)


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


def _signal_group(pgid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signum)


def group_members(pgid: int) -> list[int]:
    """Lists the live (not zombie) processes of a process group.

    Args:
        pgid: the process group id.

    Returns:
        Their pids, in no particular order.
    """
    members = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        fields = _read_stat_fields(int(entry.name))
        if fields and fields[2] != "Z" and int(fields[4]) == pgid:
            members.append(int(entry.name))
    return members


def _read_stat_fields(pid: int) -> list[str] | None:
    """Returns /proc/PID/stat split into fields, fields[0] being the pid, or None."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may hold spaces.
    head, _, tail = raw.rpartition(")")
    pid_part, _, comm = head.partition(" (")
    return [pid_part, comm, *tail.split()]


def cpu_ticks(pgids: list[int]) -> dict[int, int]:
    """Reads the CPU time of each process in some process groups.

    Children's times (cutime, cstime) are included so that a worker which exits and is
    reaped during a measurement still counts, through its parent.

    Args:
        pgids: the process group ids.

    Returns:
        pid -> utime + stime + cutime + cstime, in clock ticks (``CLOCK_TICKS_PER_S``).
    """
    ticks = {}
    for pgid in pgids:
        for pid in group_members(pgid):
            fields = _read_stat_fields(pid)
            if fields:
                ticks[pid] = sum(int(value) for value in fields[13:17])
    return ticks


def cpu_seconds_between(before: dict[int, int], after: dict[int, int]) -> float:
    """Returns the CPU seconds a group used between two ``cpu_ticks`` readings.

    A process absent from ``before`` (started in between) counts from zero.

    Args:
        before: the earlier reading.
        after: the later reading.

    Returns:
        CPU seconds, user plus system.
    """
    used = sum(total - before.get(pid, 0) for pid, total in after.items())
    return max(used, 0) / CLOCK_TICKS_PER_S


def memory_bytes(pgid: int) -> tuple[int, int]:
    """Sums resident and proportional set sizes over a process group.

    Args:
        pgid: the process group id.

    Returns:
        (sum of VmRSS, sum of Pss) in bytes. RSS counts pages shared between processes
        once per process; PSS divides them among the sharers.
    """
    rss = pss = 0
    for pid in group_members(pgid):
        rss += _read_kib(f"/proc/{pid}/status", "VmRSS:")
        pss += _read_kib(f"/proc/{pid}/smaps_rollup", "Pss:")
    return rss * 1024, pss * 1024


def _read_kib(path: str, key: str) -> int:
    try:
        with open(path) as lines:
            for line in lines:
                if line.startswith(key):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


class MemorySampler:
    """Samples the summed memory of process groups in a thread and keeps the peaks.

    Use as a context manager around a load. Attributes after exit: ``peak_rss_bytes``,
    ``peak_pss_bytes`` (sums over all the groups' processes at the sampled instant).

    Args:
        pgids: the process groups to sample together.
        interval_s: seconds between samples.
    """

    def __init__(self, pgids: list[int], *, interval_s: float = MEMORY_SAMPLE_INTERVAL_S) -> None:
        self.pgids = list(pgids)
        self.interval_s = interval_s
        self.peak_rss_bytes = 0
        self.peak_pss_bytes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> MemorySampler:
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self._sample()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._sample()

    def _sample(self) -> None:
        rss = pss = 0
        for pgid in self.pgids:
            group_rss, group_pss = memory_bytes(pgid)
            rss += group_rss
            pss += group_pss
        self.peak_rss_bytes = max(self.peak_rss_bytes, rss)
        self.peak_pss_bytes = max(self.peak_pss_bytes, pss)


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


def core_times(cores: list[int]) -> dict[int, tuple[int, int]]:
    """Reads busy and total time of some cores from /proc/stat.

    Args:
        cores: core numbers.

    Returns:
        core -> (busy ticks, total ticks); busy is everything but idle and iowait.
    """
    times = {}
    with open("/proc/stat") as stat:
        for line in stat:
            name, *values = line.split()
            if name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in cores:
                ticks = [int(value) for value in values[:8]]
                idle = ticks[3] + ticks[4]
                times[int(name[3:])] = (sum(ticks) - idle, sum(ticks))
    return times


def core_busy_fraction(before: tuple[int, int], after: tuple[int, int]) -> float:
    """Returns the fraction of time a core was busy between two ``core_times`` readings.

    Args:
        before: (busy, total) ticks at the start.
        after: (busy, total) ticks at the end.

    Returns:
        A fraction between 0 and 1 (0 when no time passed).
    """
    total = after[1] - before[1]
    return (after[0] - before[0]) / total if total > 0 else 0.0


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

"""What a process group uses, read from /proc: memory, CPU time, and core busy time.

Group membership comes from ``/proc/PID/stat``; fallback CPU time from
``/proc/PID/task/TID/schedstat`` (nanoseconds; the main source is ``harness.cgroups``);
memory from ``/proc/PID/status`` (VmRSS, and VmHWM: a process's peak) and
``/proc/PID/smaps_rollup`` (Pss); per-core busy time from ``/proc/stat``. Source: proc(5).
"""

from __future__ import annotations

import contextlib
import os
import threading
from pathlib import Path
from typing import Final

MEMORY_SAMPLE_INTERVAL_S: Final = 0.5
# Pss is read on every n-th sample only (see memory_bytes).
PSS_EVERY_NTH_SAMPLE: Final = 4


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


def schedstat_cpu_s(pgids: list[int]) -> float:
    """Sums the CPU time of every live thread in some process groups.

    The fallback when no control group could be made (``harness.cgroups``): precise to
    the nanosecond, but a thread that exits takes its time with it.

    Args:
        pgids: the process group ids.

    Returns:
        CPU seconds (user + system) the groups' live threads have used since they started.
    """
    total_ns = 0
    for pgid in pgids:
        for pid in group_members(pgid):
            with contextlib.suppress(OSError):
                for task in os.scandir(f"/proc/{pid}/task"):
                    with contextlib.suppress(OSError, ValueError, IndexError):
                        total_ns += int(Path(task.path, "schedstat").read_text().split()[0])
    return total_ns / 1e9


def memory_bytes(pgid: int, *, with_pss: bool = True) -> tuple[int, int]:
    """Sums resident and proportional set sizes over a process group.

    Args:
        pgid: the process group id.
        with_pss: also read Pss; smaps_rollup walks each process's page tables, about
            0.3 ms per process here, so it is read less often than VmRSS.

    Returns:
        (sum of VmRSS, sum of Pss or 0) in bytes. RSS counts pages shared between
        processes once per process; PSS divides them among the sharers.
    """
    rss = pss = 0
    for pid in group_members(pgid):
        rss += _read_kib(f"/proc/{pid}/status", "VmRSS:")
        if with_pss:
            pss += _read_kib(f"/proc/{pid}/smaps_rollup", "Pss:")
    return rss * 1024, pss * 1024


def peak_process_rss_bytes(pgids: list[int]) -> int:
    """Returns the highest peak resident set size of any one process of some groups.

    Args:
        pgids: the process group ids.

    Returns:
        The largest VmHWM (the kernel's high-water mark of a process's RSS since it
        started) of their live processes, in bytes; 0 when none is alive.
    """
    peaks = [
        _read_kib(f"/proc/{pid}/status", "VmHWM:") for pgid in pgids for pid in group_members(pgid)
    ]
    return max(peaks, default=0) * 1024


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
    ``peak_pss_bytes`` (sums over all the groups' processes at the sampled instant; Pss
    is read on every ``PSS_EVERY_NTH_SAMPLE``-th sample and at the end).

    Args:
        pgids: the process groups to sample together.
        interval_s: seconds between samples.
    """

    def __init__(self, pgids: list[int], *, interval_s: float = MEMORY_SAMPLE_INTERVAL_S) -> None:
        self.pgids = list(pgids)
        self.interval_s = interval_s
        self.peak_rss_bytes = 0
        self.peak_pss_bytes = 0
        self._samples = 0
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
        with_pss = self._samples % PSS_EVERY_NTH_SAMPLE == 0 or self._stop.is_set()
        self._samples += 1
        rss = pss = 0
        for pgid in self.pgids:
            group_rss, group_pss = memory_bytes(pgid, with_pss=with_pss)
            rss += group_rss
            pss += group_pss
        self.peak_rss_bytes = max(self.peak_rss_bytes, rss)
        self.peak_pss_bytes = max(self.peak_pss_bytes, pss)


def core_times(cores: list[int]) -> dict[int, tuple[int, int]]:
    """Reads how long some cores ran tasks, and their total time, from /proc/stat.

    Args:
        cores: core numbers.

    Returns:
        core -> (task ticks, total ticks); task time is user + nice + system, so idle,
        I/O wait and interrupt handling (loopback's softirq work) are left out.
    """
    times = {}
    with open("/proc/stat") as stat:
        for line in stat:
            name, *values = line.split()
            if name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in cores:
                ticks = [int(value) for value in values[:8]]
                times[int(name[3:])] = (ticks[0] + ticks[1] + ticks[2], sum(ticks))
    return times


def core_task_fraction(before: tuple[int, int], after: tuple[int, int]) -> float:
    """Returns the fraction of time a core ran tasks between two ``core_times`` readings.

    Args:
        before: (task, total) ticks at the start.
        after: (task, total) ticks at the end.

    Returns:
        A fraction between 0 and 1 (0 when no time passed).
    """
    total = after[1] - before[1]
    return (after[0] - before[0]) / total if total > 0 else 0.0

"""Per-server CPU accounting with control groups, when the machine lets the harness make them.

/proc/PID/stat reports CPU time in whole clock ticks (10 ms) per process, which loses
nearly everything for Apache prefork: 256 children that each run a few milliseconds
during a load all read 0. A control group counts in nanoseconds for every process and
thread in it, including those that exit, so each server is started inside its own:

    cgroup v2: <mount>/vend-bench-<harness pid>/<server>/cpu.stat      (usage_usec)
    cgroup v1: <cpuacct mount>/vend-bench-<harness pid>/<server>/cpuacct.usage  (ns)

Where neither can be created (no permission, read-only /sys/fs/cgroup), the harness falls
back to summing /proc/PID/task/TID/schedstat (nanoseconds, live threads only); see
``harness.procstat.schedstat_cpu_s``. Source: the kernel's cgroup-v2.rst and cgroup-v1
cpuacct.rst.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal

CGROUP_ROOT: Final = Path("/sys/fs/cgroup")
# A hybrid layout mounts cgroup v2 here, next to the v1 controllers.
CGROUP_V2_CANDIDATES: Final = (CGROUP_ROOT, CGROUP_ROOT / "unified")
CGROUP_V1_CPUACCT: Final = CGROUP_ROOT / "cpuacct"

CgroupVersion = Literal["v1", "v2"]


@dataclass(frozen=True)
class CpuCgroup:
    """One server's control group.

    Attributes:
        directory: the cgroup's directory.
        version: "v1" (cpuacct) or "v2".
    """

    directory: Path
    version: CgroupVersion

    @property
    def procs_file(self) -> Path:
        """The file a process writes its pid to in order to join."""
        return self.directory / "cgroup.procs"

    def read_cpu_s(self) -> float:
        """Returns the CPU time (user + system) of everything that ran in the group.

        Returns:
            Seconds since the group was made.

        Raises:
            OSError: if the accounting file cannot be read.
        """
        if self.version == "v1":
            return int((self.directory / "cpuacct.usage").read_text()) / 1e9
        for line in (self.directory / "cpu.stat").read_text().splitlines():
            key, _, value = line.partition(" ")
            if key == "usage_usec":
                return int(value) / 1e6
        raise OSError(f"no usage_usec in {self.directory / 'cpu.stat'}")

    def remove(self) -> None:
        """Removes the group's directory; it must hold no process any more."""
        with contextlib.suppress(OSError):
            self.directory.rmdir()


class CpuCgroups:
    """Makes a control group per server under one directory for this run.

    Construction probes cgroup v2, then v1 cpuacct; ``version`` is None when neither
    works, and ``create`` then returns None.
    """

    def __init__(self) -> None:
        self.root: Path | None = None
        self.version: CgroupVersion | None = None
        name = f"vend-bench-{os.getpid()}"
        candidates: list[tuple[Path, CgroupVersion]] = [
            (mount, "v2")
            for mount in CGROUP_V2_CANDIDATES
            if (mount / "cgroup.procs").exists() and (mount / "cgroup.controllers").exists()
        ]
        if (CGROUP_V1_CPUACCT / "cpuacct.usage").exists():
            candidates.append((CGROUP_V1_CPUACCT, "v1"))
        for mount, version in candidates:
            try:
                (mount / name).mkdir(exist_ok=True)
            except OSError:
                continue
            self.root, self.version = mount / name, version
            break

    @property
    def source(self) -> str:
        """Where server CPU time comes from, for the results page."""
        if self.version == "v2":
            return "cgroup v2 cpu.stat (usage_usec)"
        if self.version == "v1":
            return "cgroup v1 cpuacct.usage"
        return "/proc/PID/task/TID/schedstat (live threads only)"

    def create(self, name: str) -> CpuCgroup | None:
        """Makes an empty group for one server.

        Args:
            name: the server's name (unique within the run).

        Returns:
            The group, or None when groups are unavailable or this one cannot be made.
        """
        if self.root is None or self.version is None:
            return None
        directory = self.root / name
        try:
            directory.mkdir()
        except FileExistsError:
            # A group of an earlier server of the same name: reuse it only if empty.
            if directory.joinpath("cgroup.procs").read_text().strip():
                return None
        except OSError:
            return None
        return CpuCgroup(directory, self.version)

    def close(self) -> None:
        """Removes the run's directory and any empty group left in it."""
        if self.root is None:
            return
        for child in self.root.iterdir():
            if child.is_dir():
                with contextlib.suppress(OSError):
                    child.rmdir()
        with contextlib.suppress(OSError):
            self.root.rmdir()

"""One measurement: a peer, a probe, a warm-up, then wrk several times with the server's
CPU time and memory read around each run.
"""

from __future__ import annotations

import statistics
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from harness.content import Probe
from harness.processes import ServerProcess
from harness.procstat import (
    MemorySampler,
    core_task_fraction,
    core_times,
    peak_process_rss_bytes,
)
from harness.wrk import WrkResult, names_script, run_wrk

GIB: Final = 2**30
MIB: Final = 2**20
# The probe measured by throughput (MiB/s) rather than by request rate.
LARGE_SIZE: Final = "256m"


@dataclass(frozen=True)
class LoadPlan:
    """How every load of one run is driven.

    Attributes:
        runs: measured wrk runs per (peer, size); the median is reported.
        duration_s: seconds per measured run.
        warmup_s: seconds of load before the measured runs, discarded (0 for none).
        connections: concurrent keep-alive connections.
        server_cpu: the core the servers run on.
        load_cpu: the core wrk runs on.
    """

    runs: int
    duration_s: float
    warmup_s: float
    connections: int
    server_cpu: int
    load_cpu: int


@dataclass(frozen=True)
class RunSample:
    """One measured wrk run.

    Attributes:
        wrk: wrk's totals.
        cpu_s: CPU seconds (user + system) the server's process groups used meanwhile.
        peak_rss_bytes: highest summed VmRSS of the server's processes seen meanwhile.
        peak_pss_bytes: highest summed Pss of the server's processes seen meanwhile.
        server_core_tasks: fraction of the server core's time spent running tasks (user +
            system, of any process); what the server did not use of it, other processes did.
        load_core_tasks: the same for the load generator's core.
        harness_cpu_s: CPU seconds the harness itself (on the load core) used meanwhile.
        peak_process_rss_bytes: the highest VmHWM of any one server process at the end of
            the run (its peak RSS since it started, warm-up included): per worker.
    """

    wrk: WrkResult
    cpu_s: float
    peak_rss_bytes: int
    peak_pss_bytes: int
    server_core_tasks: float
    load_core_tasks: float = 0.0
    harness_cpu_s: float = 0.0
    peak_process_rss_bytes: int = 0

    @property
    def server_cpu_share(self) -> float:
        """Server CPU seconds per wall second: 1.0 is one whole core."""
        return self.cpu_s / self.wrk.duration_s

    @property
    def client_cpu_share(self) -> float:
        """wrk's CPU seconds per wall second: near 1.0, wrk is the limit."""
        return self.wrk.cpu_s / self.wrk.duration_s

    @property
    def others_share(self) -> float:
        """Share of the server core that other processes ran on (should be near 0)."""
        return max(self.server_core_tasks - self.server_cpu_share, 0.0)

    @property
    def load_others_share(self) -> float:
        """Share of the load generator's core that processes other than wrk and the
        harness ran on (should be near 0)."""
        own = (self.wrk.cpu_s + self.harness_cpu_s) / self.wrk.duration_s
        return max(self.load_core_tasks - own, 0.0)

    @property
    def cpu_us_per_request(self) -> float | None:
        """Server CPU microseconds per completed response (None if none completed)."""
        return self.cpu_s / self.wrk.requests * 1e6 if self.wrk.requests else None

    @property
    def cpu_s_per_gib(self) -> float | None:
        """Server CPU seconds per GiB received by wrk (None if nothing was received)."""
        return self.cpu_s / (self.wrk.bytes_read / GIB) if self.wrk.bytes_read else None


@dataclass
class Measurement:
    """All runs of one (peer, probe) pair, with medians over the runs.

    Attributes:
        peer: the peer's name.
        probe: the probe that was requested.
        samples: the measured runs, in order.
        error: why the measurement failed (the peer did not start, answered wrongly, or
            wrk failed), or None.
        warmups: the warm-up runs' totals (not measured; the long-tail loads count each
            response's status in them).
    """

    peer: str
    probe: Probe
    samples: list[RunSample] = field(default_factory=list)
    error: str | None = None
    warmups: list[WrkResult] = field(default_factory=list)

    def _median(self, values: list[float | None]) -> float | None:
        present = [value for value in values if value is not None]
        return statistics.median(present) if present else None

    @property
    def ok(self) -> bool:
        """Whether there are samples and no failure."""
        return self.error is None and bool(self.samples)

    @property
    def requests_per_s(self) -> float | None:
        """Median completed responses per second."""
        return self._median([s.wrk.requests_per_s for s in self.samples])

    @property
    def mib_per_s(self) -> float | None:
        """Median MiB per second received (headers and partial bodies included)."""
        return self._median([s.wrk.mib_per_s for s in self.samples])

    @property
    def p99_ms(self) -> float | None:
        """Median over runs of the 99th percentile latency, in milliseconds."""
        return self._median([s.wrk.p99_us / 1000 if s.wrk.requests else None for s in self.samples])

    @property
    def cpu_us_per_request(self) -> float | None:
        """Median server CPU microseconds per response."""
        return self._median([s.cpu_us_per_request for s in self.samples])

    @property
    def cpu_s_per_gib(self) -> float | None:
        """Median server CPU seconds per GiB sent."""
        return self._median([s.cpu_s_per_gib for s in self.samples])

    @property
    def peak_rss_mib(self) -> float | None:
        """Highest summed RSS over all runs, in MiB."""
        return max(s.peak_rss_bytes for s in self.samples) / MIB if self.samples else None

    @property
    def peak_pss_mib(self) -> float | None:
        """Highest summed PSS over all runs, in MiB."""
        return max(s.peak_pss_bytes for s in self.samples) / MIB if self.samples else None

    @property
    def peak_process_rss_mib(self) -> float | None:
        """Highest VmHWM of any one server process over all runs, in MiB."""
        return max(s.peak_process_rss_bytes for s in self.samples) / MIB if self.samples else None

    @property
    def p50_ms(self) -> float | None:
        """Median over runs of the median latency, in milliseconds."""
        return self._median([s.wrk.p50_us / 1000 if s.wrk.requests else None for s in self.samples])

    @property
    def server_cpu_share(self) -> float | None:
        """Median server CPU seconds per wall second (1.0 is one whole core)."""
        return self._median([s.server_cpu_share for s in self.samples])

    @property
    def client_cpu_share(self) -> float | None:
        """Median wrk CPU seconds per wall second."""
        return self._median([s.client_cpu_share for s in self.samples])

    @property
    def others_share(self) -> float | None:
        """Median share of the server core used by other processes."""
        return self._median([s.others_share for s in self.samples])

    @property
    def load_others_share(self) -> float | None:
        """Median share of the load core used by processes other than wrk and the harness."""
        return self._median([s.load_others_share for s in self.samples])

    @property
    def wrk_errors(self) -> int:
        """Errors wrk counted over all runs (non-2xx/3xx, socket errors, timeouts)."""
        return sum(s.wrk.error_count for s in self.samples)


def measure(
    *,
    peer: str,
    probe: Probe,
    url: str,
    servers: list[ServerProcess],
    plan: LoadPlan,
    script_dir: Path,
    script: tuple[Path, list[str]] | None = None,
    warmup_script: tuple[Path, list[str]] | None = None,
) -> Measurement:
    """Warms a peer up on one URL (or its probe's names), then measures it ``plan.runs`` times.

    Args:
        peer: the peer's name.
        probe: the probe behind ``url``; with ``names_file``, each request asks for one of
            those names at random instead.
        url: full URL on 127.0.0.1.
        servers: the processes whose CPU and memory count as the server's.
        plan: runs, durations, connections and load core.
        script_dir: where the wrk script for a names load is written.
        script: (wrk script, its arguments) for the measured runs of any other load
            (``wrk.combined_script``); takes the place of the probe's names.
        warmup_script: the same for the warm-up (default ``script``).

    Returns:
        The measurement; wrk failures are recorded in ``error``, not raised.
    """
    result = Measurement(peer=peer, probe=probe)
    pgids = [server.pgid for server in servers]

    def cpu_s() -> float:
        return sum(server.read_cpu_s() for server in servers)

    names = (names_script(script_dir), probe.names_file) if probe.names_file else None
    try:
        if plan.warmup_s > 0:
            warmup = run_wrk(
                url,
                connections=plan.connections,
                duration_s=plan.warmup_s,
                cpu=plan.load_cpu,
                names=names,
                script=warmup_script or script,
            )
            result.warmups.append(warmup)
        for _ in range(plan.runs):
            cores = [plan.server_cpu, plan.load_cpu]
            with MemorySampler(pgids) as memory:
                before, cores_before = cpu_s(), core_times(cores)
                own_before = time.process_time()
                wrk = run_wrk(
                    url,
                    connections=plan.connections,
                    duration_s=plan.duration_s,
                    cpu=plan.load_cpu,
                    names=names,
                    script=script,
                )
                after, cores_after = cpu_s(), core_times(cores)
                own_after = time.process_time()
            result.samples.append(
                RunSample(
                    wrk=wrk,
                    cpu_s=max(after - before, 0.0),
                    peak_rss_bytes=memory.peak_rss_bytes,
                    peak_pss_bytes=memory.peak_pss_bytes,
                    server_core_tasks=core_task_fraction(
                        cores_before[plan.server_cpu], cores_after[plan.server_cpu]
                    ),
                    load_core_tasks=core_task_fraction(
                        cores_before[plan.load_cpu], cores_after[plan.load_cpu]
                    ),
                    harness_cpu_s=own_after - own_before,
                    peak_process_rss_bytes=peak_process_rss_bytes(pgids),
                )
            )
    except (RuntimeError, OSError, subprocess.TimeoutExpired) as error:
        result.error = str(error)
    return result


def headline(measurement: Measurement) -> float | None:
    """Returns what a load's ratios compare: req/s for small files, MiB/s for the large one.

    Args:
        measurement: one (peer, size) measurement.

    Returns:
        The median value, or None without samples.
    """
    if measurement.probe.key == LARGE_SIZE:
        return measurement.mib_per_s
    return measurement.requests_per_s

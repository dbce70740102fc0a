"""Runs wrk against one URL and reads its totals.

wrk is started as ``taskset -c CPU wrk -t1 -cN -dDs --latency --timeout T -s wrk_summary.lua
URL``: one thread on the load core, HTTP/1.1 keep-alive (wrk's only mode), and the Lua
``done`` hook printing exact totals as JSON (``WRK_SUMMARY {...}``) after wrk's own report
(and, for the long-tail loads, ``WRK_STATUS {...}``: status counts and requests for names
no mount has).
"""

from __future__ import annotations

import dataclasses
import json
import resource
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Final

SUMMARY_SCRIPT: Final = Path(__file__).with_name("wrk_summary.lua")
NAMES_SCRIPT: Final = Path(__file__).with_name("wrk_names.lua")
LONG_TAIL_SCRIPT: Final = Path(__file__).with_name("wrk_long_tail.lua")
STATUS_COUNTS_SCRIPT: Final = Path(__file__).with_name("wrk_status_counts.lua")
SUMMARY_MARKER: Final = "WRK_SUMMARY "
STATUS_MARKER: Final = "WRK_STATUS "
# A 256 MiB response shared among many connections takes seconds; wrk's default 2 s
# would count each one as a timeout.
RESPONSE_TIMEOUT_S: Final = 60
# Upper bound on how much longer than its duration wrk may run before it is killed.
EXIT_SLACK_S: Final = 30


@dataclass(frozen=True)
class WrkResult:
    """Totals of one wrk run.

    Attributes:
        duration_s: measured duration in seconds.
        requests: completed responses.
        bytes_read: bytes received, headers and partial bodies included.
        errors: wrk's error counts by kind: connect, read, write, status (responses that
            were not 2xx or 3xx), timeout.
        p50_us, p90_us, p99_us, max_us: response latency percentiles in microseconds
            (0 when no response completed).
        raw: wrk's complete standard output, for the raw file beside the results.
        cpu_s: CPU seconds (user + system) wrk itself used; 0 when not measured.
        statuses: completed responses by status code, when the script counted them
            (``wrk_status_counts.lua``), else None.
        sent_missing: requests sent for names no mount has (long-tail loads), else None.
    """

    duration_s: float
    requests: int
    bytes_read: int
    errors: dict[str, int]
    p50_us: int
    p90_us: int
    p99_us: int
    max_us: int
    raw: str
    cpu_s: float = 0.0
    statuses: dict[int, int] | None = None
    sent_missing: int | None = None

    @property
    def requests_per_s(self) -> float:
        """Completed responses per second."""
        return self.requests / self.duration_s

    @property
    def mib_per_s(self) -> float:
        """Bytes received per second, in MiB (2**20 bytes)."""
        return self.bytes_read / self.duration_s / 2**20

    @property
    def error_count(self) -> int:
        """All errors wrk counted, of every kind."""
        return sum(self.errors.values())

    @property
    def socket_errors(self) -> int:
        """Connect, read and write errors and timeouts (every error but a status)."""
        return sum(count for kind, count in self.errors.items() if kind != "status")


def names_script(directory: Path) -> Path:
    """Writes the script for loads over many names: wrk_names.lua plus the summary hook.

    Args:
        directory: where the combined script goes.

    Returns:
        Its path.
    """
    return combined_script(directory / "wrk-names.lua", [NAMES_SCRIPT])


def combined_script(path: Path, parts: list[Path]) -> Path:
    """Writes one wrk script (wrk takes one) from some parts plus the summary hook.

    Args:
        path: the file to write.
        parts: Lua files, joined in this order before ``wrk_summary.lua``.

    Returns:
        ``path``.
    """
    path.write_text("\n".join(part.read_text() for part in [*parts, SUMMARY_SCRIPT]))
    return path


def run_wrk(
    url: str,
    *,
    connections: int,
    duration_s: float,
    cpu: int,
    names: tuple[Path, Path] | None = None,
    script: tuple[Path, list[str]] | None = None,
) -> WrkResult:
    """Runs one wrk load and returns its totals.

    Args:
        url: the full http:// or https:// URL to request (a loopback address).
        connections: concurrent keep-alive connections.
        duration_s: load duration in seconds (whole seconds are passed to wrk).
        cpu: the core wrk is pinned to.
        names: (script from ``names_script``, file of paths) to ask for a path picked at
            random on each request instead of ``url``'s; None for ``url`` only.
        script: (a script from ``combined_script``, its arguments), for any other load;
            takes the place of ``names``.

    Returns:
        The run's totals.

    Raises:
        RuntimeError: if wrk fails or prints no summary.
        subprocess.TimeoutExpired: if wrk outlives its duration by ``EXIT_SLACK_S``.
    """
    if names:
        script = (names[0], [str(names[1])])
    argv = [
        "taskset",
        "-c",
        str(cpu),
        "wrk",
        "-t1",
        f"-c{connections}",
        f"-d{max(1, round(duration_s))}s",
        "--latency",
        f"--timeout={RESPONSE_TIMEOUT_S}s",
        "-s",
        str(script[0] if script else SUMMARY_SCRIPT),
        url,
    ]
    if script:
        argv += ["--", *script[1]]
    # wrk is the only child reaped meanwhile (servers are reaped when stopped), so the
    # change in the children's resource usage is wrk's CPU time.
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run(
        argv, capture_output=True, text=True, timeout=duration_s + EXIT_SLACK_S, check=False
    )
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    result = parse_wrk_output(done.stdout, done.stderr, done.returncode)
    cpu_s = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return dataclasses.replace(result, cpu_s=cpu_s)


def parse_wrk_output(stdout: str, stderr: str = "", returncode: int = 0) -> WrkResult:
    """Reads the ``WRK_SUMMARY`` line of wrk's output.

    Args:
        stdout: wrk's standard output.
        stderr: wrk's standard error, for the error message.
        returncode: wrk's exit status.

    Returns:
        The run's totals.

    Raises:
        RuntimeError: if wrk failed or the summary line is missing.
    """
    lines = [line for line in stdout.splitlines() if line.startswith(SUMMARY_MARKER)]
    if returncode != 0 or not lines:
        raise RuntimeError(
            f"wrk exited {returncode} without a summary: {(stderr or stdout).strip()[-400:]}"
        )
    data = json.loads(lines[-1][len(SUMMARY_MARKER) :])
    errors = {kind: int(data[f"{kind}_errors"]) for kind in ("connect", "read", "write", "status")}
    errors["timeout"] = int(data["timeouts"])
    statuses = sent_missing = None
    status_lines = [line for line in stdout.splitlines() if line.startswith(STATUS_MARKER)]
    if status_lines:
        extra = json.loads(status_lines[-1][len(STATUS_MARKER) :])
        statuses = {int(code): int(count) for code, count in extra["statuses"].items()} or None
        sent_missing = int(extra["sent_missing"])
    return WrkResult(
        duration_s=max(int(data["duration_us"]), 1) / 1e6,
        requests=int(data["requests"]),
        bytes_read=int(data["bytes"]),
        errors=errors,
        p50_us=int(data["p50_us"]),
        p90_us=int(data["p90_us"]),
        p99_us=int(data["p99_us"]),
        max_us=int(data["max_us"]),
        raw=stdout,
        statuses=statuses,
        sent_missing=sent_missing,
    )

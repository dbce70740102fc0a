"""Issue 10's targets, checked within one run, and the loads other processes disturbed.

nginx ``try_files`` is the reference throughout (``harness.peers.NGINX_REFERENCE``); the
production path is compared with Apache serving the file itself over TLS. A load during
which other processes took ``CONTENDED_SHARE`` or more of the server's core or of the
load generator's is flagged, and so is every target that uses it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Final

from harness.content import LOAD_LABELS, NAMES_KEY
from harness.loads import LARGE_SIZE, Measurement, headline
from harness.peers import NGINX_REFERENCE, TLS_REFERENCE

CONTENDED_SHARE: Final = 0.2
SIZE_LABELS: Final = dict(LOAD_LABELS)


def by_peer_size(measurements: Iterable[Measurement]) -> dict[tuple[str, str], Measurement]:
    """Indexes measurements by (peer, load key).

    Args:
        measurements: measurements of one run.

    Returns:
        (peer, load key) -> measurement.
    """
    return {(m.peer, m.probe.key): m for m in measurements}


@dataclass(frozen=True)
class _Target:
    label: str
    peer: str
    reference: str
    size: str
    passes: Callable[[float], bool]
    metric: Callable[[Measurement], float | None] = headline
    # "ratio": metric(peer) / metric(reference); "value": metric(peer) alone.
    kind: str = "ratio"


def _p99(m: Measurement) -> float | None:
    return m.p99_ms


# Issue 10's targets, nginx try_files as the reference throughout.
_TARGETS: Final = [
    _Target(
        "4 KiB, one name: vend / nginx try_files req/s >= 1.0 (aim 1.3)",
        "vend",
        NGINX_REFERENCE,
        "4k",
        lambda r: r >= 1.0,
    ),
    _Target(
        "4 KiB: vend server CPU per request <= 25 µs",
        "vend",
        NGINX_REFERENCE,
        "4k",
        lambda v: v <= 25,
        lambda m: m.cpu_us_per_request,
        kind="value",
    ),
    _Target(
        "4 KiB: vend p99 latency / nginx try_files p99 <= 3",
        "vend",
        NGINX_REFERENCE,
        "4k",
        lambda r: r <= 3,
        _p99,
    ),
    _Target(
        "4 KiB, 2,000 names at random: vend / nginx try_files >= 0.8",
        "vend",
        NGINX_REFERENCE,
        NAMES_KEY,
        lambda r: r >= 0.8,
    ),
    _Target(
        "4 KiB, access log to a file: vend / nginx try_files (log on) >= 0.8",
        "vend-log",
        "nginx-try-files-log",
        "4k",
        lambda r: r >= 0.8,
    ),
    _Target(
        "100 KiB: vend / nginx try_files >= 0.6",
        "vend",
        NGINX_REFERENCE,
        "100k",
        lambda r: r >= 0.6,
    ),
    _Target(
        "256 MiB: vend / nginx try_files MiB/s >= 0.9",
        "vend",
        NGINX_REFERENCE,
        LARGE_SIZE,
        lambda r: r >= 0.9,
    ),
    _Target(
        "256 MiB: vend / nginx try_files CPU s per GiB <= 2",
        "vend",
        NGINX_REFERENCE,
        LARGE_SIZE,
        lambda r: r <= 2,
        lambda m: m.cpu_s_per_gib,
    ),
    _Target(
        "TLS 4 KiB: Apache (shipped vhost) -> vend / Apache static >= 0.5",
        "tls-apache-vend",
        TLS_REFERENCE,
        "4k",
        lambda r: r >= 0.5,
    ),
]


def is_contended(m: Measurement) -> bool:
    """Whether other processes took ``CONTENDED_SHARE`` or more of either core.

    Args:
        m: one measurement.

    Returns:
        True for a contended load.
    """
    return max(m.others_share or 0, m.load_others_share or 0) >= CONTENDED_SHARE


def targets_section(measurements: list[Measurement]) -> list[str]:
    """Issue 10's targets, checked against this run's ratios (vend rows only).

    Args:
        measurements: every measurement of the run.

    Returns:
        Markdown lines of the targets section (none when no target could be computed).
    """
    index = by_peer_size(measurements)
    rows = []
    for target in _TARGETS:
        a, b = index.get((target.peer, target.size)), index.get((target.reference, target.size))
        if not (a and a.ok) or (target.kind == "ratio" and not (b and b.ok)):
            continue
        top = target.metric(a)
        if top is None:
            continue
        if target.kind == "value":
            value, shown = top, f"{top:.0f}"
        else:
            bottom = target.metric(b) if b else None
            if not bottom:
                continue
            value = top / bottom
            shown = f"{value:.2f}"
        verdict = "met" if target.passes(value) else "missed"
        if is_contended(a) or (target.kind == "ratio" and b and is_contended(b)):
            verdict += " (contended run: see notes)"
        rows.append(f"| {target.label} | {shown} | {verdict} |")
    vend_rss = [
        m.peak_rss_mib
        for (peer, _), m in index.items()
        if peer in ("vend", "vend-log") and m.ok and m.peak_rss_mib is not None
    ]
    if vend_rss:
        worst = max(vend_rss)
        rows.append(
            f"| vend peak RSS per worker <= 100 MiB (one worker) | {worst:.0f} MiB | "
            f"{'met' if worst <= 100 else 'missed'} |"
        )
    if not rows:
        return []
    return [
        "## Targets of issue 10 (ratios within this run)",
        "",
        "| target | measured | |",
        "|---|---:|---|",
        *rows,
        "",
    ]


def contention_notes(measurements: list[Measurement]) -> list[str]:
    """Names the loads during which other processes took part of the server's core or of
    the load generator's.

    Args:
        measurements: every measurement of the run.

    Returns:
        One note, or none when no load was contended.
    """
    flagged = [
        f"{m.peer} {SIZE_LABELS[m.probe.key]} ({(m.others_share or 0) * 100:.0f}% of core 0, "
        f"{(m.load_others_share or 0) * 100:.0f}% of core 1)"
        for m in measurements
        if m.ok and is_contended(m)
    ]
    if not flagged:
        return []
    return [
        f"CONTENDED: other processes took {CONTENDED_SHARE:.0%} or more of the server's core "
        "(0) or of the load generator's (1) during these loads; their numbers are low by up "
        "to that much, and a full run for the record should be repeated on a quiet machine: "
        + ", ".join(flagged)
        + "."
    ]

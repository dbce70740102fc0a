"""Writes a run's results: a markdown table, the raw wrk output, a JSON dump and a chart.

Files, for a run started on YYYY-MM-DD (``-quick`` and ``-partial`` are added to the stem
for ``--quick`` runs and ``--only`` runs, whose files go to ``results/draft/``, which git
ignores)::

    results/YYYY-MM-DD.md         the tables, the versions, the targets of issue 10
    results/YYYY-MM-DD-wrk.txt    every wrk report, in run order
    results/YYYY-MM-DD.json       every number, per run, for machines
    results/YYYY-MM-DD.png        bar chart of the headline numbers
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from harness.chart import render_chart
from harness.content import LOAD_LABELS
from harness.loads import LARGE_SIZE, LoadPlan, Measurement, headline
from harness.peers import LEGACY_REFERENCE, NGINX_REFERENCE, PEERS, TLS_REFERENCE
from harness.targets import by_peer_size, contention_notes, targets_section

SIZE_LABELS: Final = dict(LOAD_LABELS)


@dataclass(frozen=True)
class RunInfo:
    """Facts about the run printed above the tables.

    Attributes:
        started: local start time, ISO 8601 to the second.
        elapsed_s: wall time of the whole run in seconds.
        plan: how the loads were driven.
        quick: whether this was a ``--quick`` run (numbers are indicative only).
        partial: whether ``--only`` left peers out.
        versions: component -> version.
        notes: remarks gathered during the run (peers skipped or failed, Range support).
    """

    started: str
    elapsed_s: float
    plan: LoadPlan
    quick: bool
    partial: bool
    versions: dict[str, str]
    notes: list[str]


def results_stem(date: str, *, quick: bool, partial: bool) -> str:
    """Returns the file stem for a run's results.

    Args:
        date: YYYY-MM-DD.
        quick: a ``--quick`` run.
        partial: an ``--only`` run.

    Returns:
        e.g. "2024-06-05", "2024-06-05-quick", "2024-06-05-quick-partial".
    """
    return date + ("-quick" if quick else "") + ("-partial" if partial else "")


def _num(value: float | None, digits: int = 0) -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}"


def _ms(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:,.1f}" if value >= 10 else f"{value:.2f}"


def _ratio(value: float | None, reference: float | None) -> str:
    if value is None or not reference:
        return "-"
    return f"{value / reference:.2f}x"


def _busy(m: Measurement) -> str:
    shares = (m.server_cpu_share, m.client_cpu_share, m.others_share, m.load_others_share)
    if any(share is None for share in shares):
        return "-"
    return " / ".join(f"{(share or 0) * 100:.0f}" for share in shares)


def _size_table(
    size: str, rows: list[Measurement], references: list[tuple[str, Measurement | None]]
) -> list[str]:
    large = size == LARGE_SIZE
    ratio_heads = [_reference_heading(name) for name, _ in references]
    heads = [
        "server",
        "req/s",
        "MiB/s",
        "p99 ms",
        "CPU s/GiB" if large else "CPU µs/req",
        "peak RSS MiB",
        "peak PSS MiB",
        *ratio_heads,
        "CPU % server / wrk / others on core 0 / others on core 1",
        "wrk errors",
    ]
    lines = [
        f"### {SIZE_LABELS[size]}",
        "",
        "| " + " | ".join(heads) + " |",
        "|---|" + "---:|" * (len(heads) - 1),
    ]
    for m in rows:
        label = _row_label(m.peer)
        if not m.ok:
            lines.append(
                f"| {label} | failed: {m.error or 'no samples'} |" + " |" * (len(heads) - 2)
            )
            continue
        cpu = _num(m.cpu_s_per_gib, 2) if large else _num(m.cpu_us_per_request)
        ratios = [
            _ratio(headline(m), headline(ref) if ref and ref.ok else None) for _, ref in references
        ]
        lines.append(
            "| "
            + " | ".join(
                [
                    label,
                    _num(m.requests_per_s, 1 if large else 0),
                    _num(m.mib_per_s),
                    _ms(m.p99_ms),
                    cpu,
                    _num(m.peak_rss_mib),
                    _num(m.peak_pss_mib),
                    *ratios,
                    _busy(m),
                    str(m.wrk_errors),
                ]
            )
            + " |"
        )
    return [*lines, ""]


def _reference_heading(name: str) -> str:
    return {
        NGINX_REFERENCE: "x nginx try_files",
        LEGACY_REFERENCE: "x mod_php",
        TLS_REFERENCE: "x Apache TLS static",
    }.get(name, f"x {name}")


def _row_label(name: str) -> str:
    peer = PEERS[name]
    label = f"**{peer.label}**" if "vend" in name else peer.label
    return label if peer.federates else f"{label} (last mount only)"


def _section(
    title: str, measurements: list[Measurement], reference_names: list[str], intro: str
) -> list[str]:
    if not measurements:
        return []
    index = by_peer_size(measurements)
    lines = [f"## {title}", "", intro, ""]
    for size, _ in LOAD_LABELS:
        rows = [m for m in measurements if m.probe.key == size]
        if rows:
            refs = [(name, index.get((name, size))) for name in reference_names]
            lines += _size_table(size, rows, refs)
    return lines


def render_markdown(info: RunInfo, measurements: list[Measurement]) -> str:
    """Renders the results page.

    Args:
        info: facts about the run.
        measurements: every (peer, size) measurement, in run order.

    Returns:
        Markdown text.
    """
    plan = info.plan
    title = f"# vend benchmark, {info.started[:10]}"
    if info.quick:
        title += " (QUICK RUN: one short run per load, indicative only)"
    plain = [m for m in measurements if PEERS[m.peer].scheme == "http"]
    tls = [m for m in measurements if PEERS[m.peer].scheme == "https"]
    lines = [
        title,
        "",
        f"Started {info.started}, took {info.elapsed_s / 60:.1f} min. "
        f"Server pinned to core 0, wrk (1 thread) to core 1; HTTP/1.1 keep-alive, "
        f"{plan.connections} connections; {plan.warmup_s:g} s warm-up, then "
        f"{plan.runs} run(s) of {plan.duration_s:g} s per load, median reported. "
        "The probe files exist only on the last of three mounts. "
        "Columns are explained in benchmarks/README.md; raw wrk output is in the "
        "`-wrk.txt` file beside this one.",
        "",
    ]
    lines += _section(
        "Direct (plain HTTP on loopback)",
        plain,
        [NGINX_REFERENCE, LEGACY_REFERENCE],
        "Ratios compare req/s (4 KiB, 100 KiB) or MiB/s (256 MiB) within this run.",
    )
    lines += _section(
        "Production path (TLS)",
        tls,
        [TLS_REFERENCE],
        "wrk -> Apache (TLS, event MPM) with the shipped apache/vend.conf (only its Define "
        "lines edited; its access log on) -> vend over its Unix socket, Apache and vend on "
        "the same core; compared with Apache serving the file itself over TLS, its access "
        "log on too.",
    )
    lines += targets_section(measurements)
    lines += notes_and_versions([*info.notes, *contention_notes(measurements)], info.versions)
    return "\n".join(lines)


def notes_and_versions(notes: list[str], versions: dict[str, str]) -> list[str]:
    """Returns the last sections of a results page: the notes (none when empty) and the
    versions table.

    Args:
        notes: remarks, one a bullet.
        versions: component -> version.

    Returns:
        Markdown lines.
    """
    lines = ["## Notes", "", *[f"- {note}" for note in notes], ""] if notes else []
    return [
        *lines,
        "## Versions",
        "",
        "| component | version |",
        "|---|---|",
        *[f"| {name} | {value} |" for name, value in versions.items()],
        "",
    ]


def render_raw(measurements: list[Measurement]) -> str:
    """Concatenates every measured wrk report with a header naming its load.

    Args:
        measurements: every measurement, in run order.

    Returns:
        Plain text.
    """
    parts = []
    for m in measurements:
        for number, sample in enumerate(m.samples, start=1):
            parts.append(
                f"===== {m.peer} {m.probe.url_path} run {number} "
                f"(server CPU {sample.cpu_s:.2f} s) =====\n{sample.wrk.raw}"
            )
        if m.error:
            parts.append(f"===== {m.peer} {m.probe.url_path} FAILED =====\n{m.error}\n")
    return "\n".join(parts)


def render_json(info: RunInfo, measurements: list[Measurement]) -> str:
    """Dumps every number of the run.

    Args:
        info: facts about the run.
        measurements: every measurement.

    Returns:
        JSON text (one object: "run", "versions", "notes", "measurements").
    """
    data = {
        "run": {
            "started": info.started,
            "elapsed_s": round(info.elapsed_s, 1),
            "quick": info.quick,
            "partial": info.partial,
            **vars(info.plan),
        },
        "versions": info.versions,
        "notes": info.notes,
        "measurements": [
            {
                "peer": m.peer,
                "size": m.probe.key,
                "url_path": m.probe.url_path,
                "error": m.error,
                "median": {
                    "requests_per_s": m.requests_per_s,
                    "mib_per_s": m.mib_per_s,
                    "p99_ms": m.p99_ms,
                    "cpu_us_per_request": m.cpu_us_per_request,
                    "cpu_s_per_gib": m.cpu_s_per_gib,
                },
                "peak_rss_mib": m.peak_rss_mib,
                "peak_pss_mib": m.peak_pss_mib,
                "runs": [
                    {
                        "duration_s": s.wrk.duration_s,
                        "requests": s.wrk.requests,
                        "bytes": s.wrk.bytes_read,
                        "errors": s.wrk.errors,
                        "p50_us": s.wrk.p50_us,
                        "p90_us": s.wrk.p90_us,
                        "p99_us": s.wrk.p99_us,
                        "max_us": s.wrk.max_us,
                        "server_cpu_s": s.cpu_s,
                        "peak_rss_bytes": s.peak_rss_bytes,
                        "peak_pss_bytes": s.peak_pss_bytes,
                        "wrk_cpu_s": round(s.wrk.cpu_s, 3),
                        "server_core_tasks": round(s.server_core_tasks, 3),
                        "load_core_tasks": round(s.load_core_tasks, 3),
                        "harness_cpu_s": round(s.harness_cpu_s, 3),
                    }
                    for s in m.samples
                ],
            }
            for m in measurements
        ],
    }
    return json.dumps(data, indent=2) + "\n"


def write_results(
    directory: Path, stem: str, info: RunInfo, measurements: list[Measurement]
) -> list[Path]:
    """Writes the markdown, raw wrk, JSON and PNG files of a run.

    Args:
        directory: benchmarks/results.
        stem: file stem from ``results_stem``.
        info: facts about the run.
        measurements: every measurement.

    Returns:
        The paths written.

    Raises:
        OSError: when a file cannot be written.
    """
    directory.mkdir(parents=True, exist_ok=True)
    paths = {
        "md": directory / f"{stem}.md",
        "raw": directory / f"{stem}-wrk.txt",
        "json": directory / f"{stem}.json",
        "png": directory / f"{stem}.png",
    }
    paths["md"].write_text(render_markdown(info, measurements))
    paths["raw"].write_text(render_raw(measurements))
    paths["json"].write_text(render_json(info, measurements))
    title = f"vend benchmark {info.started[:10]}" + (" (quick run)" if info.quick else "")
    render_chart(paths["png"], title, measurements)
    return [path for path in paths.values() if path.exists()]

"""The long-tail loads (issue 17): many more names than any cache holds, most asked rarely.

``benchmarks/compare --load long-tail`` runs them. The tree (``content.build_long_tail_tree``)
holds 200,000 distinct files of 4 KiB by default, a third on each of three mounts; wrk
(``wrk_long_tail.lua``) picks a name per request:

- ``uniform``: every name equally likely;
- ``zipf``: Zipf-distributed over the same names (s = 1: the k-th name is asked with
  probability proportional to 1/k);
- ``misses``: uniform, with 20% of requests naming a file no mount has.

Each peer (``peers.LONG_TAIL_PEERS``) is started fresh, its answers checked (a file on each
mount, a missing name), then loaded with the three loads in turn, and stopped; the whole
sequence is repeated ``rounds`` times, so slow drift of a shared machine spreads over all
peers, and the median of the rounds is reported. The warm-up before each load (longer
before a peer's first) counts every response's status; the measured runs check wrk's count
of statuses >= 400 against the requests sent for missing names.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from harness.content import LongTailTree, Probe, long_tail_missing_path
from harness.loads import LoadPlan, Measurement, RunSample, measure
from harness.peers import (
    LEGACY_REFERENCE,
    NGINX_OFC_REFERENCE,
    NGINX_REFERENCE,
    Context,
    Peer,
    Running,
)
from harness.probes import ProbeMismatchError, verify_missing, verify_peer
from harness.processes import stop_server
from harness.report import RunInfo, _busy, _ms, _num, _ratio, notes_and_versions
from harness.targets import is_contended
from harness.wrk import LONG_TAIL_SCRIPT, STATUS_COUNTS_SCRIPT, WrkResult, combined_script

MISS_SHARE: Final = 0.2
# Issue 17's bound on vend's memory under these loads, per worker.
RSS_BOUND_MIB: Final = 128


@dataclass(frozen=True)
class LongTailLoad:
    """One long-tail load.

    Attributes:
        key: short name ("lt-uniform", "lt-zipf", "lt-misses").
        label: the load as the results page names it.
        mode: how wrk_long_tail.lua picks a name: "uniform" or "zipf".
        miss_share: fraction of requests naming a file no mount has (0 to 1).
    """

    key: str
    label: str
    mode: str
    miss_share: float


LOADS: Final = (
    LongTailLoad("lt-uniform", "(a) uniform over every name", "uniform", 0.0),
    LongTailLoad("lt-zipf", "(b) Zipf, s = 1.0, over the same names", "zipf", 0.0),
    LongTailLoad(
        "lt-misses",
        f"(c) uniform, {MISS_SHARE:.0%} of requests for names no mount has",
        "uniform",
        MISS_SHARE,
    ),
)


@dataclass(frozen=True)
class LongTailPlan:
    """How the long-tail loads are driven.

    Attributes:
        load: warm-up, measured duration (``runs`` is 1: rounds repeat), connections, cores.
        first_warmup_s: seconds of warm-up before a freshly started peer's first load.
        rounds: how many times every peer is started and given every load.
    """

    load: LoadPlan
    first_warmup_s: float
    rounds: int

    def minutes(self, peers: int) -> float:
        """Estimated wall time of a run, in minutes (tree already built).

        Args:
            peers: how many peers run.

        Returns:
            Minutes: warm-ups, measured runs, half a second around each run, and 5 s to
            start, check and stop each peer (Apache prefork forks a child per connection).
        """
        load = self.load
        per_peer = (
            self.first_warmup_s
            + (len(LOADS) - 1) * load.warmup_s
            + len(LOADS) * (load.duration_s + 0.5)
            + 5
        )
        return per_peer * peers * self.rounds / 60


@dataclass(frozen=True)
class LongTailRun:
    """What a long-tail results page is made of.

    Attributes:
        info: facts about the run (versions, notes, elapsed time).
        plan: how the loads were driven.
        tree: the tree served.
        measurements: merged measurements (``merge_rounds``).
        label: what the run is (e.g. "baseline: vend at 479898a"), for the title, or None.
    """

    info: RunInfo
    plan: LongTailPlan
    tree: LongTailTree
    measurements: list[Measurement]
    label: str | None


def _scripts(
    ctx: Context, peer: str, load: LongTailLoad, tree: LongTailTree
) -> tuple[tuple[Path, list[str]], tuple[Path, list[str]]]:
    """Returns (measured runs' script, warm-up's script with status counts) and arguments."""
    run_dir = ctx.run_dir(peer)
    args = [load.mode, str(tree.names_file), str(tree.missing_file), str(load.miss_share)]
    plain = combined_script(run_dir / "wrk-long-tail.lua", [LONG_TAIL_SCRIPT])
    counting = combined_script(
        run_dir / "wrk-long-tail-counting.lua", [LONG_TAIL_SCRIPT, STATUS_COUNTS_SCRIPT]
    )
    return (plain, args), (counting, args)


def _probe(load: LongTailLoad, tree: LongTailTree) -> Probe:
    last = tree.checks[-1]
    return Probe(load.key, load.label, last.url_path, last.size_bytes, last.sha256)


def run_peer_long_tail(
    peer: Peer,
    ctx: Context,
    tree: LongTailTree,
    plan: LongTailPlan,
    say: Callable[[str], None],
) -> list[Measurement]:
    """Starts one peer, checks its answers, gives it every long-tail load, and stops it.

    Args:
        peer: the peer.
        ctx: paths, registry and cores; its mounts are the tree's.
        tree: the long-tail tree.
        plan: how loads are driven.
        say: prints a progress line.

    Returns:
        One measurement per load (one sample each); failures are recorded, not raised.
    """
    running: Running | None = None
    try:
        say(f"[{peer.name}] starting")
        running = peer.start(ctx)
        verify_peer(scheme="http", port=running.port, probes=tree.checks, check_body=True)
        verify_missing(port=running.port, url_path=long_tail_missing_path(0))
        results = []
        for index, load in enumerate(LOADS):
            warmup = plan.first_warmup_s if index == 0 else plan.load.warmup_s
            script, warmup_script = _scripts(ctx, peer.name, load, tree)
            result = measure(
                peer=peer.name,
                probe=_probe(load, tree),
                url=f"http://127.0.0.1:{running.port}/",
                servers=running.servers,
                plan=dataclasses.replace(plan.load, warmup_s=warmup),
                script_dir=ctx.run_dir(peer.name),
                script=script,
                warmup_script=warmup_script,
            )
            say(f"[{peer.name}] {load.label}: {_one_line(result)}")
            results.append(result)
        return results
    except (RuntimeError, OSError, ProbeMismatchError) as error:
        say(f"[{peer.name}] failed: {error}")
        return [
            Measurement(peer=peer.name, probe=_probe(load, tree), error=str(error)[:200])
            for load in LOADS
        ]
    finally:
        if running is not None:
            for server in reversed(running.servers):
                stop_server(server, ctx.registry)


def merge_rounds(rounds: list[list[Measurement]]) -> list[Measurement]:
    """Joins the measurements of several rounds into one per (peer, load).

    Args:
        rounds: each round's measurements, in run order.

    Returns:
        One measurement per (peer, load), in the first round's order, holding every
        round's samples and warm-ups (its medians are over the rounds); the first error
        of any round is kept.
    """
    merged: dict[tuple[str, str], Measurement] = {}
    for measurements in rounds:
        for m in measurements:
            key = (m.peer, m.probe.key)
            if key not in merged:
                merged[key] = Measurement(peer=m.peer, probe=m.probe)
            into = merged[key]
            into.samples += m.samples
            into.warmups += m.warmups
            into.error = into.error or m.error
    return list(merged.values())


def response_problems(m: Measurement, connections: int) -> list[str]:
    """Checks that a load got what it asked for: 200 for every name on a mount, 404 for
    every name on none, and no socket error or timeout.

    Warm-ups counted each status exactly. Measured runs did not (counting costs wrk), so
    wrk's count of statuses >= 400 must lie between the requests sent for missing names
    less the connections still in flight at the end, and those requests.

    Args:
        m: one merged measurement.
        connections: the load's concurrent connections.

    Returns:
        What was wrong, one line each; empty when nothing was.
    """
    problems = []
    for warmup in m.warmups:
        statuses = dict(warmup.statuses or {})
        sent = warmup.sent_missing or 0
        not_found = statuses.pop(404, 0)
        statuses.pop(200, None)
        if statuses:
            problems.append(f"warm-up: unexpected statuses {statuses}")
        if not sent - connections <= not_found <= sent:
            problems.append(f"warm-up: {not_found} answers 404 for {sent} missing names asked")
        if warmup.socket_errors:
            problems.append(f"warm-up: {warmup.socket_errors} socket errors or timeouts")
    for sample in m.samples:
        wrk = sample.wrk
        sent = wrk.sent_missing or 0
        failed = wrk.errors.get("status", 0)
        if not sent - connections <= failed <= sent:
            problems.append(f"run: {failed} answers >= 400 for {sent} missing names asked")
        if wrk.socket_errors:
            problems.append(f"run: {wrk.socket_errors} socket errors or timeouts")
    return problems


def _one_line(m: Measurement) -> str:
    if not m.ok:
        return f"failed: {m.error}"
    return (
        f"{m.requests_per_s or 0:,.0f} req/s, p50 {m.p50_ms or 0:.2f} ms, "
        f"p99 {m.p99_ms or 0:.1f} ms, {m.cpu_us_per_request or 0:.0f} CPU µs/req, "
        f"peak RSS/process {m.peak_process_rss_mib or 0:.0f} MiB, CPU % server/wrk/others "
        f"{_busy(m)}, socket errors {sum(s.wrk.socket_errors for s in m.samples)}"
    )


def _index(measurements: list[Measurement]) -> dict[tuple[str, str], Measurement]:
    return {(m.peer, m.probe.key): m for m in measurements}


def _p99_ratio(m: Measurement, ref: Measurement | None) -> str:
    if not (ref and ref.ok and ref.p99_ms and m.p99_ms is not None):
        return "-"
    return f"{m.p99_ms / ref.p99_ms:.2f}x"


def _targets(
    measurements: list[Measurement], connections: int
) -> tuple[list[str], list[dict[str, object]]]:
    """Issue 17's targets, as markdown rows and as JSON objects."""
    index = _index(measurements)
    rows: list[str] = []
    found: list[dict[str, object]] = []

    def add(
        label: str,
        value: float | None,
        bound: float,
        at_least: bool,
        loads: list[Measurement | None],
    ) -> None:
        if value is None:
            return
        met = value >= bound if at_least else value <= bound
        verdict = "met" if met else "missed"
        if any(is_contended(m) for m in loads if m):
            verdict += " (contended run: see notes)"
        if any(response_problems(m, connections) for m in loads if m):
            verdict += " (unexpected responses: see notes)"
        rows.append(f"| {label} | {value:.2f} | {verdict} |")
        found.append({"target": label, "value": round(value, 3), "met": met, "verdict": verdict})

    for key, bound in (("lt-uniform", 0.8), ("lt-zipf", 1.0), ("lt-misses", 0.8)):
        vend, ref = index.get(("vend", key)), index.get((NGINX_OFC_REFERENCE, key))
        if not (vend and vend.ok and ref and ref.ok and ref.requests_per_s):
            continue
        label = next(load.label for load in LOADS if load.key == key)
        ratio = (vend.requests_per_s or 0) / ref.requests_per_s
        add(
            f"{label}: vend / nginx try_files + open_file_cache req/s >= {bound}",
            ratio,
            bound,
            True,
            [vend, ref],
        )
        if key == "lt-uniform" and vend.p99_ms is not None and ref.p99_ms:
            add(
                f"{label}: vend p99 / nginx try_files + open_file_cache p99 <= 3",
                vend.p99_ms / ref.p99_ms,
                3,
                False,
                [vend, ref],
            )
    peaks = [m.peak_process_rss_mib for (peer, _), m in index.items() if peer == "vend" and m.ok]
    if peaks:
        worst = max(p or 0 for p in peaks)
        met = worst <= RSS_BOUND_MIB
        rows.append(
            f"| vend peak RSS per worker (VmHWM) <= {RSS_BOUND_MIB} MiB | {worst:.0f} MiB | "
            f"{'met' if met else 'missed'} |"
        )
        found.append(
            {
                "target": f"vend peak RSS per worker <= {RSS_BOUND_MIB} MiB",
                "value": round(worst, 1),
                "met": met,
            }
        )
    return rows, found


def render_markdown(run: LongTailRun) -> str:
    """Renders the long-tail results page.

    Args:
        run: the run's facts, plan, tree and merged measurements.

    Returns:
        Markdown text.
    """
    info, plan, tree, measurements, label = (
        run.info,
        run.plan,
        run.tree,
        run.measurements,
        run.label,
    )
    load = plan.load
    title = f"# vend long-tail benchmark, {info.started[:10]}"
    if label:
        title += f" ({label})"
    if info.quick:
        title += " (QUICK RUN: indicative only)"
    lines = [
        title,
        "",
        f"Started {info.started}, took {info.elapsed_s / 60:.1f} min. {tree.count:,} distinct "
        f"files of 4 KiB, a third on each of three mounts. Server pinned to core 0, wrk "
        f"(1 thread) to core 1; HTTP/1.1 keep-alive, {load.connections} connections. "
        f"{plan.rounds} round(s), each starting every peer afresh and giving it every load: "
        f"{plan.first_warmup_s:g} s warm-up before a peer's first load, {load.warmup_s:g} s "
        f"before the others, then {load.duration_s:g} s measured; the median over the rounds "
        "is reported. Columns: benchmarks/README.md (long-tail section).",
        "",
    ]
    index = _index(measurements)
    notes = list(info.notes)
    for lt in LOADS:
        rows = [m for m in measurements if m.probe.key == lt.key]
        if not rows:
            continue
        refs = [
            index.get((name, lt.key))
            for name in (NGINX_OFC_REFERENCE, NGINX_REFERENCE, LEGACY_REFERENCE)
        ]
        lines += [
            f"### {lt.label}",
            "",
            "| server | req/s | CPU µs/req | p50 ms | p99 ms | peak RSS per process MiB "
            "| x nginx + open_file_cache | p99 x nginx + open_file_cache | x nginx try_files "
            "| x mod_php | CPU % server / wrk / others on core 0 / others on core 1 "
            "| responses |",
            "|---|" + "---:|" * 10 + "---|",
        ]
        for m in rows:
            name = f"**{m.peer}**" if m.peer == "vend" else m.peer
            if not m.ok:
                lines.append(f"| {name} | failed: {m.error or 'no samples'} |" + " |" * 10)
                continue
            problems = response_problems(m, load.connections)
            if problems:
                notes.append(f"{m.peer}, {lt.label}: " + "; ".join(problems))
            lines.append(
                "| "
                + " | ".join(
                    [
                        name,
                        _num(m.requests_per_s),
                        _num(m.cpu_us_per_request),
                        _ms(m.p50_ms),
                        _ms(m.p99_ms),
                        _num(m.peak_process_rss_mib),
                        *[
                            _ratio(m.requests_per_s, ref.requests_per_s if ref and ref.ok else None)
                            for ref in refs[:1]
                        ],
                        _p99_ratio(m, refs[0]),
                        *[
                            _ratio(m.requests_per_s, ref.requests_per_s if ref and ref.ok else None)
                            for ref in refs[1:]
                        ],
                        _busy(m),
                        "UNEXPECTED (notes)" if problems else _statuses(m),
                    ]
                )
                + " |"
            )
        lines.append("")
    rows, _ = _targets(measurements, load.connections)
    if rows:
        lines += [
            "## Targets of issue 17 (ratios within this run)",
            "",
            "| target | measured | |",
            "|---|---:|---|",
            *rows,
            "",
        ]
    contended = [
        f"{m.peer} {m.probe.key} ({(m.others_share or 0) * 100:.0f}% of core 0, "
        f"{(m.load_others_share or 0) * 100:.0f}% of core 1)"
        for m in measurements
        if m.ok and is_contended(m)
    ]
    if contended:
        notes.append(
            "CONTENDED: other processes took 20% or more of core 0 or core 1 during: "
            + ", ".join(contended)
            + "."
        )
    lines += notes_and_versions(notes, info.versions)
    return "\n".join(lines)


def _statuses(m: Measurement) -> str:
    total: dict[int, int] = {}
    for warmup in m.warmups:
        for code, count in (warmup.statuses or {}).items():
            total[code] = total.get(code, 0) + count
    counted = ", ".join(f"{code} x {count:,}" for code, count in sorted(total.items()))
    return f"ok (warm-up: {counted})" if counted else "ok"


def _wrk_json(wrk: WrkResult) -> dict[str, object]:
    return {
        "duration_s": wrk.duration_s,
        "requests": wrk.requests,
        "requests_per_s": wrk.requests_per_s,
        "bytes": wrk.bytes_read,
        "errors": wrk.errors,
        "statuses": {str(k): v for k, v in (wrk.statuses or {}).items()} or None,
        "sent_missing": wrk.sent_missing,
        "p50_us": wrk.p50_us,
        "p90_us": wrk.p90_us,
        "p99_us": wrk.p99_us,
        "max_us": wrk.max_us,
        "wrk_cpu_s": round(wrk.cpu_s, 3),
    }


def _sample_json(s: RunSample) -> dict[str, object]:
    return {
        **_wrk_json(s.wrk),
        "server_cpu_s": s.cpu_s,
        "cpu_us_per_request": s.cpu_us_per_request,
        "peak_rss_bytes": s.peak_rss_bytes,
        "peak_process_rss_bytes": s.peak_process_rss_bytes,
        "server_core_tasks": round(s.server_core_tasks, 3),
        "load_core_tasks": round(s.load_core_tasks, 3),
        "harness_cpu_s": round(s.harness_cpu_s, 3),
    }


def render_json(run: LongTailRun) -> str:
    """Dumps every number of a long-tail run.

    Args:
        run: the run's facts, plan, tree and merged measurements.

    Returns:
        JSON text: "run", "versions", "notes", "targets", "measurements" (medians, and
        every round's run and warm-up).
    """
    _, targets = _targets(run.measurements, run.plan.load.connections)
    data = {
        "run": {
            "label": run.label,
            "started": run.info.started,
            "elapsed_s": round(run.info.elapsed_s, 1),
            "quick": run.info.quick,
            "files": run.tree.count,
            "rounds": run.plan.rounds,
            "first_warmup_s": run.plan.first_warmup_s,
            **vars(run.plan.load),
        },
        "versions": run.info.versions,
        "notes": run.info.notes,
        "targets": targets,
        "measurements": [
            {
                "peer": m.peer,
                "load": m.probe.key,
                "label": m.probe.label,
                "error": m.error,
                "median": {
                    "requests_per_s": m.requests_per_s,
                    "cpu_us_per_request": m.cpu_us_per_request,
                    "p50_ms": m.p50_ms,
                    "p99_ms": m.p99_ms,
                },
                "peak_process_rss_mib": m.peak_process_rss_mib,
                "response_problems": response_problems(m, run.plan.load.connections),
                "runs": [_sample_json(s) for s in m.samples],
                "warmups": [_wrk_json(w) for w in m.warmups],
            }
            for m in run.measurements
        ],
    }
    return json.dumps(data, indent=2) + "\n"


def write_results(directory: Path, stem: str, run: LongTailRun) -> list[Path]:
    """Writes ``<stem>.md`` and ``<stem>.json`` of a long-tail run.

    Args:
        directory: where they go.
        stem: e.g. "2026-12-07.longtail".
        run: the run's facts, plan, tree and merged measurements.

    Returns:
        The two paths.

    Raises:
        OSError: when a file cannot be written.
    """
    directory.mkdir(parents=True, exist_ok=True)
    md, js = directory / f"{stem}.md", directory / f"{stem}.json"
    md.write_text(render_markdown(run))
    js.write_text(render_json(run))
    return [md, js]

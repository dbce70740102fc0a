"""Compares vend with the servers it replaces or competes with, side by side in one run.

Run it through ``benchmarks/compare`` (which installs the peers and this script's
packages first); see benchmarks/README.md for what each column means. With
``--load long-tail`` it runs issue 17's long-tail loads instead (``harness.longtail``).

Every server listens on 127.0.0.1 only, is pinned to core 0 and is stopped (its whole
process group) before the next one starts; wrk runs on core 1, as does this script.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import os
import signal
import sys
import time
from pathlib import Path
from typing import Final, NoReturn

# Only the standard library below this line's imports: ``--help`` and ``--list`` run with
# any python3, before benchmarks/compare installs anything (see main() for the rest).
from harness import longtail
from harness import peers as peers_module
from harness.apache_etc import EtcSnapshot
from harness.cgroups import CpuCgroups
from harness.configs import TlsFiles
from harness.content import LONG_TAIL_FILE_COUNT, Probe, build_tree, mount_dirs
from harness.loads import LoadPlan, Measurement, measure
from harness.peers import LONG_TAIL_PEERS, PEERS, Context, Peer, Running
from harness.probes import ProbeMismatchError, verify_peer
from harness.processes import Registry, stop_server

BENCH_DIR: Final = Path(__file__).resolve().parent
REPO: Final = BENCH_DIR.parent
WORK_DIR: Final = BENCH_DIR / "work"
SERVER_CPU: Final = 0
LOAD_CPU: Final = 1
FULL_PLAN: Final = LoadPlan(
    runs=3, duration_s=8, warmup_s=2, connections=256, server_cpu=SERVER_CPU, load_cpu=LOAD_CPU
)
QUICK_PLAN: Final = LoadPlan(
    runs=1, duration_s=3, warmup_s=1, connections=256, server_cpu=SERVER_CPU, load_cpu=LOAD_CPU
)
# --load long-tail: 2 rounds over the 4 peers, 3 loads each: about 8 minutes.
LONG_TAIL_PLAN: Final = longtail.LongTailPlan(
    load=LoadPlan(
        runs=1, duration_s=12, warmup_s=3, connections=64, server_cpu=SERVER_CPU, load_cpu=LOAD_CPU
    ),
    first_warmup_s=10,
    rounds=2,
)
QUICK_LONG_TAIL_PLAN: Final = longtail.LongTailPlan(
    load=LoadPlan(
        runs=1, duration_s=3, warmup_s=1, connections=64, server_cpu=SERVER_CPU, load_cpu=LOAD_CPU
    ),
    first_warmup_s=2,
    rounds=1,
)
PEERS_NEEDING_VEND: Final = ("vend", "vend-log", "tls-apache-vend")
RESULTS_DIR: Final = BENCH_DIR / "results"
# --quick and --only runs: git ignores this folder; only full runs are committed.
DRAFT_RESULTS_DIR: Final = RESULTS_DIR / "draft"
# /etc/apache2 as benchmarks/compare found it, saved before it installed any package.
ETC_SNAPSHOT: Final = WORK_DIR / "etc-apache2.snapshot"


def parse_args(argv: list[str]) -> argparse.Namespace:
    """Parses the command line.

    Args:
        argv: arguments without the program name.

    Returns:
        The options.

    Raises:
        SystemExit: on invalid arguments or after ``--list``.
    """
    parser = argparse.ArgumentParser(
        prog="benchmarks/compare",
        description="Benchmark vend against nginx, Apache, mod_php and Python peers on loopback. "
        f"A full run (no --quick, no --only) takes about "
        f"{estimate_minutes(list(PEERS.values()), FULL_PLAN):.0f} minutes; --help and --list "
        "install nothing. --load long-tail: issue 17's long-tail loads (uniform, Zipf, 20% "
        f"misses over {LONG_TAIL_FILE_COUNT:,} files), about "
        f"{LONG_TAIL_PLAN.minutes(len(LONG_TAIL_PEERS)):.0f} minutes.",
    )
    parser.add_argument(
        "--load",
        choices=("standard", "long-tail"),
        default="standard",
        help="standard: the loads of issue 10 (default); long-tail: many names, most asked "
        "rarely (results/YYYY-MM-DD.longtail.{md,json})",
    )
    parser.add_argument(
        "--files",
        type=int,
        metavar="N",
        default=LONG_TAIL_FILE_COUNT,
        help=f"--load long-tail: distinct files in the tree (default {LONG_TAIL_FILE_COUNT:,}; "
        "issue 17 asks for at least 100,000)",
    )
    parser.add_argument(
        "--label",
        metavar="TEXT",
        help='--load long-tail: what the run is, for the title (e.g. "baseline: vend at 479898a")',
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"one {QUICK_PLAN.duration_s:g} s run per load (indicative only)",
    )
    parser.add_argument("--only", metavar="NAME[,NAME]", help="run only these peers (see --list)")
    parser.add_argument("--list", action="store_true", help="list the peers and exit")
    parser.add_argument(
        "--connections",
        type=int,
        metavar="N",
        help=f"concurrent connections per load (default {FULL_PLAN.connections}; "
        f"--load long-tail: {LONG_TAIL_PLAN.load.connections})",
    )
    parser.add_argument(
        "--results-dir",
        type=Path,
        help="where the results files go (default benchmarks/results for a full run, "
        "benchmarks/results/draft, which git ignores, for --quick and --only runs)",
    )
    options = parser.parse_args(argv)
    peers = LONG_TAIL_PEERS if options.load == "long-tail" else PEERS
    if options.list:
        for peer in peers.values():
            loads = ", ".join(peer.sizes) if options.load == "standard" else "long-tail loads"
            print(f"{peer.name:20} {peer.label} [{loads}]")
        raise SystemExit(0)
    if options.only:
        names = [name.strip() for name in options.only.split(",") if name.strip()]
        unknown = [name for name in names if name not in peers]
        if unknown:
            parser.error(f"unknown peer(s) {', '.join(unknown)}; --list shows the names")
        options.peers = [peers[name] for name in peers if name in names]
    else:
        options.peers = list(peers.values())
    if not 3 <= options.files <= 2_000_000:
        parser.error("--files must be between 3 and 2000000")
    if options.connections is not None and not 1 <= options.connections <= 10_000:
        parser.error("--connections must be between 1 and 10000")
    return options


def estimate_minutes(peers: list[Peer], plan: LoadPlan) -> float:
    """How long a run takes, in minutes: each load's warm-up and runs, plus half a second
    around each run and 4 s to start, check and stop each peer (what runs took on
    Debian 12: a --quick run of every peer 3.3 minutes).

    Args:
        peers: the peers to run.
        plan: how loads are driven.

    Returns:
        Minutes.
    """
    loads = sum(len(peer.sizes) for peer in peers)
    per_load = plan.warmup_s + plan.runs * (plan.duration_s + 0.5)
    return (loads * per_load + 4 * len(peers)) / 60


def _raise_on_sigterm(signum: int, frame: object) -> NoReturn:
    raise SystemExit(128 + signum)


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run_peer(
    peer: Peer,
    ctx: Context,
    probes: dict[str, Probe],
    plan: LoadPlan,
    cafile: Path | None,
    notes: list[str],
) -> list[Measurement]:
    """Starts one peer, checks its answers, measures each of its sizes, and stops it.

    Args:
        peer: the peer.
        ctx: paths, registry and cores.
        probes: probe key -> Probe.
        plan: how loads are driven.
        cafile: CA certificate for HTTPS peers.
        notes: remarks for the results page (appended to).

    Returns:
        One measurement per size; failures are recorded in them, not raised.
    """
    peer_probes = [probes[size] for size in peer.sizes]
    running: Running | None = None
    try:
        _say(f"[{peer.name}] starting")
        running = peer.start(ctx)
        check = verify_peer(
            scheme=peer.scheme,
            port=running.port,
            probes=peer_probes,
            check_body=peer.serves_probe_bytes,
            cafile=cafile,
        )
        if check.honours_range is False:
            notes.append(
                f"{peer.label}: answers `Range: bytes=0-99` with the whole file (no byte ranges)."
            )
        results = []
        for probe in peer_probes:
            url = f"{peer.scheme}://127.0.0.1:{running.port}{probe.url_path}"
            result = measure(
                peer=peer.name,
                probe=probe,
                url=url,
                servers=running.servers,
                plan=plan,
                script_dir=ctx.run_dir(peer.name),
            )
            _say(f"[{peer.name}] {probe.label}: " + _one_line(result))
            results.append(result)
        return results
    except (RuntimeError, OSError, ProbeMismatchError) as error:
        _say(f"[{peer.name}] failed: {error}")
        notes.append(f"{peer.label}: not measured ({error}).")
        return [
            Measurement(peer=peer.name, probe=probe, error=str(error)[:200])
            for probe in peer_probes
        ]
    finally:
        if running is not None:
            for server in reversed(running.servers):
                stop_server(server, ctx.registry)


def _one_line(m: Measurement) -> str:
    if not m.ok:
        return f"failed: {m.error}"
    cpu = (
        f"{m.cpu_s_per_gib:.2f} CPU s/GiB"
        if m.probe.key == "256m" and m.cpu_s_per_gib
        else f"{m.cpu_us_per_request or 0:.0f} CPU µs/req"
    )
    return (
        f"{m.requests_per_s or 0:,.0f} req/s, {m.mib_per_s or 0:,.0f} MiB/s, "
        f"p99 {m.p99_ms or 0:.1f} ms, {cpu}, RSS {m.peak_rss_mib or 0:.0f} MiB, "
        f"CPU % server/wrk/others {(m.server_cpu_share or 0) * 100:.0f}/"
        f"{(m.client_cpu_share or 0) * 100:.0f}/{(m.others_share or 0) * 100:.0f}, "
        f"wrk errors {m.wrk_errors}"
    )


def make_context(mounts: list[Path], connections: int, tls: TlsFiles | None = None) -> Context:
    """Makes what every peer's start needs, with an empty registry of started groups and
    a fresh maker of control groups (close ``ctx.cgroups`` after the run).

    Args:
        mounts: the mount directories, in search order.
        connections: the loads' concurrent connections.
        tls: certificate and key for the HTTPS peers, or None.

    Returns:
        The context.
    """
    registry = Registry(WORK_DIR / "run" / "pgids")
    registry.reset()
    return Context(
        repo=REPO,
        work_dir=WORK_DIR,
        mounts=mounts,
        bench_python=Path(sys.executable),
        registry=registry,
        server_cpu=SERVER_CPU,
        connections=connections,
        cgroups=CpuCgroups(),
        tls=tls,
    )


def _etc_apache_note() -> str:
    """Returns: whether /etc/apache2 is as benchmarks/compare found it, for the notes."""
    if not ETC_SNAPSHOT.with_suffix(".json").is_file():
        return "/etc/apache2 was not saved (no snapshot)."
    changed = EtcSnapshot.load(ETC_SNAPSHOT).differences()
    if changed:
        return (
            "/etc/apache2 differs from what benchmarks/compare found (restored at exit): "
            + ", ".join(changed[:10])
        )
    return "/etc/apache2 byte-identical to what benchmarks/compare found."


def main_long_tail(options: argparse.Namespace, peers: list[Peer], notes: list[str]) -> int:
    """Runs the long-tail loads (``--load long-tail``) and writes their results.

    Args:
        options: the command line (``--quick``, ``--connections``, ``--files``, ``--label``,
            ``--results-dir``).
        peers: the long-tail peers to run (vend left out when it is not installed).
        notes: remarks so far (appended to).

    Returns:
        0 when results were written (even if some peers failed; the page says which).
    """
    from harness.content import build_long_tail_tree, prime_long_tail_tree
    from harness.report import RunInfo
    from harness.versions import collect_versions

    started_wall = datetime.datetime.now().replace(microsecond=0)
    started = time.monotonic()
    plan = QUICK_LONG_TAIL_PLAN if options.quick else LONG_TAIL_PLAN
    if options.connections:
        plan = dataclasses.replace(
            plan, load=dataclasses.replace(plan.load, connections=options.connections)
        )
    _say(
        f"{len(peers)} peers x {len(longtail.LOADS)} long-tail loads x {plan.rounds} rounds, "
        f"about {plan.minutes(len(peers)):.0f} min"
    )
    _say(f"building the long-tail tree ({options.files:,} files) under benchmarks/work/longtail")
    tree = build_long_tail_tree(WORK_DIR, options.files)
    if tree.count < 100_000:
        notes.append(f"Only {tree.count:,} files: issue 17 asks for at least 100,000.")
    ctx = make_context(tree.mounts, plan.load.connections)
    cgroups = ctx.cgroups
    rounds: list[list[Measurement]] = []
    reread_s: list[float] = []
    try:
        for number in range(1, plan.rounds + 1):
            _say(f"round {number} of {plan.rounds}")
            measured: list[Measurement] = []
            for peer in peers:
                # Before each peer, not once: on a VM whose host reclaims idle page cache
                # (DAMON), pages read minutes ago may be gone by the last peer's turn.
                reread = time.monotonic()
                prime_long_tail_tree(tree)
                reread_s.append(time.monotonic() - reread)
                _say(f"read every file in {reread_s[-1]:.0f} s")
                measured.extend(longtail.run_peer_long_tail(peer, ctx, tree, plan, _say))
            rounds.append(measured)
    finally:
        cgroups.close()
    if reread_s:
        notes.append(
            "Every file was read before each peer of each round (so that each starts "
            f"with the tree in the page cache): {min(reread_s):.1f} to {max(reread_s):.1f} s "
            "a time; a long one means pages had been reclaimed since the read before."
        )
    measurements = longtail.merge_rounds(rounds)
    for m in measurements:
        if m.error:
            notes.append(f"{m.peer} {m.probe.key}: not measured ({m.error}).")
    notes.append(f"Server CPU time from {cgroups.source}.")
    notes.append(
        "nginx open_file_cache: max="
        f"{peers_module.open_file_cache_entries(plan.load.connections)[0]} "
        f"(wanted {peers_module.OPEN_FILE_CACHE_ENTRIES}; a descriptor per entry, under the "
        "hard RLIMIT_NOFILE) "
        f"inactive={peers_module.OPEN_FILE_CACHE_INACTIVE_S}s, "
        f"open_file_cache_valid {peers_module.OPEN_FILE_CACHE_VALID_S}s, "
        "open_file_cache_errors on (lookups that found nothing are cached too)."
    )
    notes.append(_etc_apache_note())
    info = RunInfo(
        started=started_wall.isoformat(),
        elapsed_s=time.monotonic() - started,
        plan=plan.load,
        quick=options.quick,
        partial=len(peers) < len(LONG_TAIL_PEERS),
        versions=collect_versions(repo=REPO, vend_python=REPO / ".venv" / "bin" / "python"),
        notes=notes,
    )
    stem = started_wall.date().isoformat() + ".longtail"
    stem += ("-quick" if info.quick else "") + ("-partial" if info.partial else "")
    results_dir = options.results_dir or (
        DRAFT_RESULTS_DIR if info.quick or info.partial else RESULTS_DIR
    )
    run = longtail.LongTailRun(info, plan, tree, measurements, options.label)
    written = longtail.write_results(results_dir, stem, run)
    print(written[0].read_text())
    _say("wrote " + ", ".join(str(path) for path in written))
    return 0


def main(argv: list[str]) -> int:
    """Runs the comparison and writes the results.

    Args:
        argv: command-line arguments without the program name.

    Returns:
        0 when results were written (even if some peers failed; the page says which),
        1 when the machine cannot run the benchmark.
    """
    options = parse_args(argv)
    # Third-party packages (trustme, matplotlib): only for a real run, from the bench venv.
    from harness.report import RunInfo, results_stem, write_results
    from harness.tls import make_certificates
    from harness.versions import collect_versions

    signal.signal(signal.SIGTERM, _raise_on_sigterm)
    if len(os.sched_getaffinity(0)) < 2 or not {SERVER_CPU, LOAD_CPU} <= os.sched_getaffinity(0):
        _say(f"benchmarks/compare needs cores {SERVER_CPU} and {LOAD_CPU}")
        return 1
    os.sched_setaffinity(0, {LOAD_CPU})
    notes: list[str] = []
    peers: list[Peer] = options.peers
    vend_bin = REPO / ".venv" / "bin" / "vend"
    if not vend_bin.is_file():
        skipped = [peer for peer in peers if peer.name in PEERS_NEEDING_VEND]
        if skipped:
            notes.append(f"vend not measured: {vend_bin} does not exist.")
            _say(f"{vend_bin} missing: skipping {', '.join(p.name for p in skipped)}")
        peers = [peer for peer in peers if peer.name not in PEERS_NEEDING_VEND]
    if options.load == "long-tail":
        return main_long_tail(options, peers, notes)

    plan = QUICK_PLAN if options.quick else FULL_PLAN
    if options.connections:
        plan = LoadPlan(**{**vars(plan), "connections": options.connections})
    started_wall = datetime.datetime.now().replace(microsecond=0)
    started = time.monotonic()

    loads = sum(len(peer.sizes) for peer in peers)
    _say(f"{len(peers)} peers, {loads} loads, about {estimate_minutes(peers, plan):.0f} min")
    _say("building the content tree under benchmarks/work/mounts")
    probes = build_tree(WORK_DIR)
    tls_files = cafile = None
    if any(peer.scheme == "https" for peer in peers):
        tls_files, cafile = make_certificates(WORK_DIR / "run" / "tls")
    ctx = make_context(mount_dirs(WORK_DIR), plan.connections, tls_files)
    cgroups = ctx.cgroups

    measurements: list[Measurement] = []
    try:
        for peer in peers:
            measurements += run_peer(peer, ctx, probes, plan, cafile, notes)
    finally:
        cgroups.close()
    notes.append(f"Server CPU time from {cgroups.source}.")

    notes.append(_etc_apache_note())
    versions = collect_versions(repo=REPO, vend_python=REPO / ".venv" / "bin" / "python")
    info = RunInfo(
        started=started_wall.isoformat(),
        elapsed_s=time.monotonic() - started,
        plan=plan,
        quick=options.quick,
        partial=len(peers) < len(PEERS),
        versions=versions,
        notes=notes,
    )
    stem = results_stem(started_wall.date().isoformat(), quick=options.quick, partial=info.partial)
    results_dir = options.results_dir or (
        DRAFT_RESULTS_DIR if options.quick or info.partial else RESULTS_DIR
    )
    written = write_results(results_dir, stem, info, measurements)
    print(written[0].read_text())
    _say("wrote " + ", ".join(str(path) for path in written))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

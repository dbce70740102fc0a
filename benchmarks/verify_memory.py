"""How much memory and time ``vend verify`` takes on a big access log, offline.

Builds, under a work directory (default ``benchmarks/work/verify``, reused by later
runs): two mounts with 60,000 small files, and a gzip-compressed Apache ``combined``
access log of 1,000,000 lines naming 320,000 distinct paths (every path at least once,
then hits drawn with a long tail, a query string on a tenth of them, IPv6 clients, a few
junk lines, POSTs and 404s). Then runs ``vend verify LOG --report ...`` as a child process
and measures its wall-clock time and its peak resident set (``getrusage`` of the
children: the kernel's own high-water mark, ``ru_maxrss``).

Writes ``benchmarks/results/verify-memory-DATE.md`` (and prints it). The issue's bound:
peak memory under 200 MiB. Run::

    .venv/bin/python benchmarks/verify_memory.py [--lines 1000000] [--paths 320000]
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import random
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
VEND = Path(sys.executable).parent / "vend"


def build_tree(work: Path, files: int) -> list[Path]:
    """Two mounts holding ``files`` files between them (reused when present)."""
    mounts = [work / "mounts" / "server1", work / "mounts" / "server2"]
    marker = work / "mounts" / f".built-{files}"
    if marker.exists():
        return mounts
    for i in range(files):
        mount = mounts[i % 2]
        path = mount / f"d{i % 97:02d}" / f"e{i % 13:02d}" / f"page-{i}.html"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"<p>old page</p>\n")
    marker.write_text("built\n")
    return mounts


def path_of(i: int, files: int) -> str:
    """The i-th distinct old link: the first ``files`` exist on the mounts, later ones not."""
    if i < files:
        return f"/d{i % 97:02d}/e{i % 13:02d}/page-{i}.html"
    return f"/gone/x{i % 101:03d}/old-page-{i}.html"


def write_log(path: Path, lines: int, paths: int, files: int, seed: int = 7) -> None:
    """The access log, gzip-compressed, every distinct path at least once."""
    rng = random.Random(seed)
    clients = ["192.0.2.10", "2001:db8::5", "198.51.100.77", "::1"]
    with gzip.open(path, "wb", compresslevel=1) as log:
        for n in range(lines):
            # The first `paths` lines name each path once; the rest favour low numbers.
            i = n if n < paths else min(paths - 1, int(rng.paretovariate(1.2)) - 1)
            target = path_of(i, files)
            if n % 10 == 3:
                target += f"?v={n % 7}"
            method, status = (
                ("POST", 200) if n % 997 == 0 else ("GET", 404 if n % 991 == 0 else 200)
            )
            if n % 50_000 == 49_999:
                log.write(b"\x00\xff garbage line that no parser accepts\n")
            log.write(
                f'{clients[n % 4]} - - [05/Dec/2026:10:{n % 60:02d}:00 +0000] "{method} {target} '
                f'HTTP/1.1" {status} 512 "-" "Mozilla/5.0 (bench)"\n'.encode()
            )


def main() -> int:
    """Build the inputs, run vend verify, write the results file."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=1_000_000)
    parser.add_argument("--paths", type=int, default=320_000)
    parser.add_argument("--files", type=int, default=60_000)
    parser.add_argument("--work", type=Path, default=REPO / "benchmarks" / "work" / "verify")
    parser.add_argument("--results", type=Path, default=REPO / "benchmarks" / "results")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    mounts = build_tree(args.work, args.files)
    log = args.work / f"access-{args.lines}-{args.paths}.log.gz"
    if not log.exists():
        write_log(log, args.lines, args.paths, args.files)
    prepared_s = time.monotonic() - started
    report = args.work / "report.jsonl"
    env = {k: v for k, v in os.environ.items() if not k.startswith("VEND_")}
    env["VEND_MOUNTS"] = json.dumps([str(m) for m in mounts])
    started = time.monotonic()
    result = subprocess.run(
        [str(VEND), "verify", str(log), "--report", str(report), "--no-progress"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    elapsed_s = time.monotonic() - started
    peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    if result.returncode not in (0, 1):
        print(result.stdout, result.stderr, file=sys.stderr)
        return 1
    peak_mib = peak_kib / 1024
    today = time.strftime("%Y-%m-%d")
    text = f"""# vend verify: memory and time on a large access log ({today})

Command: `.venv/bin/python benchmarks/verify_memory.py --lines {args.lines} --paths {args.paths} --files {args.files}`
(inputs built in {prepared_s:.0f} s, not counted below).

| input | value |
|---|---|
| access log lines (gzip, Apache combined) | {args.lines:,} |
| distinct paths | {args.paths:,} |
| files on the two mounts | {args.files:,} |
| machine | {platform.machine()}, {os.cpu_count()} cores shared with other work, Python {platform.python_version()} |

| result | value |
|---|---|
| wall-clock time | **{elapsed_s:.1f} s** |
| peak resident memory (`ru_maxrss`) | **{peak_mib:.1f} MiB** (bound: 200 MiB) |
| exit status | {result.returncode} |

Summary printed by `vend verify`:

```
{result.stdout.rstrip()}
```
"""
    args.results.mkdir(parents=True, exist_ok=True)
    out = args.results / f"verify-memory-{today}.md"
    out.write_text(text)
    print(text)
    print(f"written to {out}")
    return 0 if peak_mib < 200 else 1


if __name__ == "__main__":
    sys.exit(main())

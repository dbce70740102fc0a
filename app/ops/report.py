"""What ``vend verify`` shows: a progress bar, the terminal summary, the report file.

The report lists every link that is not served as it was (every outcome but
``served`` and ``redirected``; with ``--all`` every link), one record per link, written
as results come in (so memory does not grow with the number of broken links): JSON
lines (``--format jsonl``, the default) with the keys ``path``, ``hits``, ``outcome``,
``mount``, ``rule`` and ``detail``, or CSV with the same columns and a header row.
``path`` is the request-target as the old server received it; bytes outside printable
ASCII are written ``\\xNN``.
"""

from __future__ import annotations

import csv
import json
from types import TracebackType
from typing import IO, Final, Literal

from tqdm import tqdm

from app.ops.sources import InputStats
from app.ops.verify import Outcome, Tally, Verdict

ReportFormat = Literal["jsonl", "csv"]
COLUMNS: Final = ("path", "hits", "outcome", "mount", "rule", "detail")


def show_target(target: bytes) -> str:
    """A request-target for people and reports: ASCII kept, other bytes as ``\\xNN``."""
    return target.decode("ascii", "backslashreplace")


class Report:
    """Counts every verdict, shows progress, and writes broken links to a file.

    Args:
        handle: the open report file, or None for no report.
        fmt: ``"jsonl"`` or ``"csv"``.
        total: links to check, for the progress bar.
        progress: show a progress bar (on standard error, only on a terminal).
        every_link: report working links too (``--all``).
    """

    def __init__(
        self,
        handle: IO[str] | None,
        fmt: ReportFormat,
        total: int,
        *,
        progress: bool = True,
        every_link: bool = False,
    ) -> None:
        self.tally = Tally()
        self._every_link = every_link
        self._handle = handle
        self._fmt = fmt
        self._csv = csv.writer(handle) if handle is not None and fmt == "csv" else None
        if self._csv is not None:
            self._csv.writerow(COLUMNS)
        self._bar = tqdm(
            total=total, unit="link", desc="checking", disable=None if progress else True
        )

    def __enter__(self) -> Report:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._bar.close()

    def add(self, target: bytes, hits: int, verdict: Verdict) -> None:
        """Count one link and write it to the report unless it works."""
        self.tally.add(target, hits, verdict)
        self._bar.update(1)
        if self._handle is None or (verdict.outcome.works and not self._every_link):
            return
        row = (
            show_target(target),
            hits,
            verdict.outcome.value,
            verdict.mount,
            verdict.rule,
            verdict.detail,
        )
        if self._csv is not None:
            self._csv.writerow(["" if v is None else v for v in row])
        else:
            self._handle.write(json.dumps(dict(zip(COLUMNS, row, strict=True))) + "\n")


def summarize(stats: InputStats, tally: Tally) -> str:
    """The terminal summary: input, counts and hit-weighted counts per outcome, top broken.

    Args:
        stats: what reading the sources found.
        tally: the verdicts' counts.

    Returns:
        Lines of text, ending with a newline.
    """
    lines = []
    for path, kind in stats.files:
        lines.append(f"read {path}: {kind}")
    skipped = ", ".join(f"{k} {v:,}" for k, v in sorted(stats.skipped.items())) or "none"
    bad = ", ".join(f"{k} {v:,}" for k, v in sorted(stats.bad.items())) or "none"
    lines.append(
        f"{stats.lines:,} lines read, {stats.used:,} used; skipped: {skipped}; unusable: {bad}"
    )
    total_paths = sum(tally.paths.values())
    total_hits = sum(tally.hits.values())
    lines.append(f"{total_paths:,} distinct links, {total_hits:,} hits")
    lines.append(f"{'outcome':<12} {'links':>10} {'%':>6} {'hits':>12} {'%':>6}")
    for outcome in Outcome:
        paths, hits = tally.paths[outcome], tally.hits[outcome]
        lines.append(
            f"{outcome.value:<12} {paths:>10,} {_pct(paths, total_paths):>6} "
            f"{hits:>12,} {_pct(hits, total_hits):>6}"
        )
    broken = tally.top_broken()
    if broken:
        lines.append(f"most used broken links (top {len(broken)}):")
        for hits, target, verdict in broken:
            why = verdict.rule or verdict.detail or ""
            lines.append(
                f"{hits:>10,}  {verdict.outcome.value:<11}  {show_target(target)}"
                + (f"  ({why})" if why else "")
            )
    return "\n".join(lines) + "\n"


def _pct(part: int, whole: int) -> str:
    return f"{100 * part / whole:.1f}" if whole else "-"

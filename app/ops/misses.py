"""What is breaking now: the names most often answered 404, 403 or 503, in fixed memory.

``MissSummary`` is the Space-Saving algorithm (Metwally, Agrawal, El Abbadi, 2005): at most
``capacity`` (path, status) entries are kept; a new path arriving when the table is full
replaces the entry with the smallest count and inherits that count (recorded as its
possible overcount, ``error``). Every path seen more than ``total / capacity`` times is
guaranteed to be in the table, and no count is ever low. Memory is bounded by
``capacity`` entries of at most ``MAX_PATH_BYTES`` each: with the default 256 entries,
under 1 MiB whatever the traffic.

Requests refused by the name rules or the whitelist (400) are counted per rule only;
their paths are never kept or shown.

With ``--workers N`` each worker writes its own summary to a small JSON file in the
metrics directory (``PROMETHEUS_MULTIPROC_DIR``) at most once a second while it has
news, and ``/.well-known/vend/misses``, answered by any worker, writes its own first and
then merges all files (``merge_snapshots``): counts and overcounts add up, first-seen is
the earliest and last-seen the latest. The merge of top-k summaries keeps the bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import json
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from app.ops.metrics import Metrics

CAPACITY: Final = 256
"""Entries kept by a summary (and shown by the endpoint): the memory bound."""
MAX_PATH_BYTES: Final = 3 * 1024 + 1
"""Longest raw path a miss can have (the name rules' limit); longer ones are cut."""
FILE_PREFIX: Final = "vend-misses-"


@dataclass(slots=True)
class _Entry:
    count: int
    error: int
    first_seen: float
    last_seen: float


class MissSummary:
    """Top-k (path, status) counts with first and last time seen, plus refusals per rule.

    Args:
        capacity: most entries kept.
    """

    def __init__(self, capacity: int = CAPACITY) -> None:
        self.capacity = capacity
        self._entries: dict[tuple[str, int], _Entry] = {}
        self._heap: list[tuple[int, int, tuple[str, int]]] = []  # (count, order, key)
        self._order = itertools.count()
        self.refused: dict[str, int] = {}
        self.total = 0
        self.started = time.time()

    def __len__(self) -> int:
        return len(self._entries)

    def record(self, path: str, status: int, now: float | None = None) -> None:
        """Count one miss.

        Args:
            path: the raw request path, without query.
            status: 404, 403 or 503.
            now: the time, seconds since the epoch (default: now).
        """
        now = time.time() if now is None else now
        key = (path[:MAX_PATH_BYTES], status)
        self.total += 1
        entry = self._entries.get(key)
        if entry is not None:
            entry.count += 1
            entry.last_seen = now
            return
        if len(self._entries) >= self.capacity:
            # Full: the least counted entry gives its place (and its count) to the
            # newcomer (Space-Saving). The heap holds each entry's count as last pushed;
            # one counted since is pushed again with its count, and the search goes on.
            heap, entries = self._heap, self._entries
            for _ in range(len(heap)):
                count, _, victim = heap[0]
                if entries[victim].count == count:
                    break
                heapq.heapreplace(heap, (entries[victim].count, next(self._order), victim))
            heapq.heappop(heap)
            floor = entries.pop(victim).count
            entry = _Entry(floor + 1, floor, now, now)
        else:
            entry = _Entry(1, 0, now, now)
        self._entries[key] = entry
        heapq.heappush(self._heap, (entry.count, next(self._order), key))

    def refuse(self, rule: str) -> None:
        """Count one request refused (400) by ``rule``; the path itself is not kept."""
        self.refused[rule] = self.refused.get(rule, 0) + 1

    def snapshot(self) -> dict[str, Any]:
        """This summary as JSON-ready data (see ``render``)."""
        return {
            "since": self.started,
            "total": self.total,
            "refused": dict(self.refused),
            "misses": [
                {
                    "path": path,
                    "status": status,
                    "count": e.count,
                    "error": e.error,
                    "first_seen": e.first_seen,
                    "last_seen": e.last_seen,
                }
                for (path, status), e in self._entries.items()
            ],
        }


def merge_snapshots(
    snapshots: Iterable[dict[str, Any]], capacity: int = CAPACITY
) -> dict[str, Any]:
    """Merge workers' snapshots into one, most counted first, at most ``capacity`` entries.

    Args:
        snapshots: ``MissSummary.snapshot()`` values.
        capacity: most entries in the result.

    Returns:
        ``{"capacity", "since", "total", "refused": {rule: count}, "misses": [...]}``, the
        misses sorted by count, highest first, with times as ISO 8601 UTC strings.
    """
    merged: dict[tuple[str, int], dict[str, Any]] = {}
    refused: dict[str, int] = {}
    total = 0
    since = time.time()
    for snap in snapshots:
        since = min(since, snap["since"])
        total += snap["total"]
        for rule, count in snap["refused"].items():
            refused[rule] = refused.get(rule, 0) + count
        for item in snap["misses"]:
            key = (item["path"], item["status"])
            seen = merged.get(key)
            if seen is None:
                merged[key] = dict(item)
                continue
            seen["count"] += item["count"]
            seen["error"] += item["error"]
            seen["first_seen"] = min(seen["first_seen"], item["first_seen"])
            seen["last_seen"] = max(seen["last_seen"], item["last_seen"])
    top = sorted(merged.values(), key=lambda i: (-i["count"], i["path"]))[:capacity]
    for item in top:
        item["first_seen"] = _iso(item["first_seen"])
        item["last_seen"] = _iso(item["last_seen"])
    return {
        "capacity": capacity,
        "since": _iso(since),
        "total": total,
        "refused": dict(sorted(refused.items())),
        "misses": top,
    }


def _iso(when: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(when))


class SharedMisses:
    """One worker's summary and metrics, and where every worker's summary is written.

    Args:
        directory: the multiprocess metrics directory, or None with one process.
        metrics: the worker's metrics (``misses`` and ``refused`` are counted there).
        capacity: entries kept.
    """

    def __init__(self, directory: str | None, metrics: Metrics, capacity: int = CAPACITY) -> None:
        self.summary = MissSummary(capacity)
        self._metrics = metrics
        self._by_status: dict[int, Any] = {}  # vend_misses_total's children, made once
        self._directory = Path(directory) if directory else None
        self._file = (
            self._directory / f"{FILE_PREFIX}{os.getpid()}.json" if self._directory else None
        )
        self.dirty = False

    @property
    def shared(self) -> bool:
        """Whether summaries are written to files for other workers."""
        return self._file is not None

    def count_miss(self, raw_path: bytes, status: int) -> None:
        """Count content answered 404, 403 or 503 (call on the event loop).

        Args:
            raw_path: the request path as received, without query.
            status: the status answered.
        """
        child = self._by_status.get(status)
        if child is None:
            child = self._by_status[status] = self._metrics.misses.labels(str(status))
        child.inc()
        self.summary.record(raw_path.decode("ascii", "replace"), status)
        self._schedule_flush()

    def count_refusal(self, rule: str) -> None:
        """Count a 400 from the name rules or the whitelist by rule, never the path."""
        self._metrics.refused.labels(rule).inc()
        self.summary.refuse(rule)
        self._schedule_flush()

    def _schedule_flush(self) -> None:
        """With several workers, write this worker's summary for the others within 1 s."""
        if self._file is not None and not self.dirty:
            self.dirty = True
            asyncio.get_running_loop().call_later(1.0, self.flush)

    def flush(self) -> None:
        """Write this worker's summary (atomically: a temporary file, then rename)."""
        self.dirty = False
        if self._file is None:
            return
        temporary = self._file.with_suffix(".tmp")
        with contextlib.suppress(OSError):
            temporary.write_text(json.dumps(self.summary.snapshot()))
            temporary.replace(self._file)

    def render(self) -> dict[str, Any]:
        """All workers' summaries merged (this worker's is written first)."""
        if self._directory is None:
            return merge_snapshots([self.summary.snapshot()], self.summary.capacity)
        self.flush()
        snapshots = []
        for path in self._directory.glob(f"{FILE_PREFIX}*.json"):
            with contextlib.suppress(OSError, ValueError, KeyError):
                snapshots.append(json.loads(path.read_text()))
        return merge_snapshots(snapshots, self.summary.capacity)

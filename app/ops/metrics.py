"""Prometheus metrics, with the prometheus-client library.

Exposed at ``/.well-known/vend/metrics`` in Prometheus' text format. With one process,
each application instance has its own registry (tests build many apps in one process).
With ``--workers N``, ``vend serve`` sets ``PROMETHEUS_MULTIPROC_DIR`` before the workers
start, each worker writes its values there, and a scrape (answered by any worker) adds
up all workers' values: prometheus-client's multiprocess mode.

On reload, the label sets of mounts no longer configured are removed (``.remove``). In
multiprocess mode prometheus-client cannot remove a label set (its values stay in the
workers' files), so the scrape itself leaves out every sample whose ``mount`` label is
not a mount of the answering worker's current table.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from typing import Any, Final

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector

from app.federation.exhaustion import EXHAUSTED

MULTIPROC_ENV: Final = "PROMETHEUS_MULTIPROC_DIR"


class Metrics:
    """vend's metrics in one registry.

    Attributes:
        requests: requests answered, by status code.
        body_bytes: response body bytes handed to the server.
        lookups: mount lookups by mount and outcome (``hit``, ``miss``, ``error``,
            ``timeout``, ``skipped`` while the mount is down).
        cache: name cache lookups by outcome.
        lookup_seconds: time of one mount lookup, in seconds.
        mount_up: 1 when the mount is usable (up or overdue), 0 when down.
        current_mounts: names of the configured mounts (what a scrape shows).
        misses: content requests answered 404, 403 or 503, by status.
        refused: requests refused (400) by the name rules or the whitelist, by rule.
        revalidations: hot cache entries revalidated before going stale
            (``app.federation.refresh``), by outcome: ``confirmed``, or ``left`` to go
            stale (changed, or a mount could not say).
        exhausted: calls that failed with EMFILE, ENFILE or ENOMEM (the process ran out
            of descriptors or memory; no mount was blamed), by errno name.
        connections_refused: new connections closed at once past
            ``limits.max_connections``.
    """

    content_type = CONTENT_TYPE_LATEST

    @property
    def multiprocess(self) -> bool:
        """True when several worker processes share these metrics (``--workers N``)."""
        return self._multiprocess

    def __init__(self) -> None:
        self._multiprocess = bool(os.environ.get(MULTIPROC_ENV))
        # In multiprocess mode values live in files; the registry is built per scrape.
        self.registry: CollectorRegistry | None = (
            None if self._multiprocess else CollectorRegistry(auto_describe=True)
        )
        self.requests = Counter(
            "vend_requests",
            "Requests answered, by status code.",
            ["status"],
            registry=self.registry,
        )
        self.body_bytes = Counter(
            "vend_response_body_bytes", "Response body bytes sent.", registry=self.registry
        )
        self.lookups = Counter(
            "vend_mount_lookups",
            "Mount lookups by outcome.",
            ["mount", "outcome"],
            registry=self.registry,
        )
        self.lookup_seconds = Histogram(
            "vend_mount_lookup_seconds",
            "Time of one mount lookup, in seconds.",
            ["mount"],
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0),
            registry=self.registry,
        )
        self.cache = Counter(
            "vend_cache_lookups",
            "Name cache lookups: hit (from memory), miss, miss_remembered (a 404 from memory).",
            ["outcome"],
            registry=self.registry,
        )
        self.misses = Counter(
            "vend_misses",
            "Content requests answered 404, 403 or 503, by status.",
            ["status"],
            registry=self.registry,
        )
        self.refused = Counter(
            "vend_refused_names",
            "Requests refused (400) by the name rules or the whitelist, by rule.",
            ["rule"],
            registry=self.registry,
        )
        self.revalidations = Counter(
            "vend_cache_revalidations",
            "Hot cache entries revalidated before going stale: confirmed, or left to go stale.",
            ["outcome"],
            registry=self.registry,
        )
        self.mount_up = Gauge(
            "vend_mount_up",
            "1 when the mount is usable (the lowest value among live workers).",
            ["mount"],
            registry=self.registry,
            multiprocess_mode="livemin",
        )

        self.exhausted = Counter(
            "vend_resource_exhaustion",
            "Calls that failed with EMFILE, ENFILE or ENOMEM (no mount blamed), by errno.",
            ["errno"],
            registry=self.registry,
        )
        self._exhausted_seen: dict[str, int] = {}
        self.connections_refused = Counter(
            "vend_connections_refused",
            "New connections closed at once: limits.max_connections were open.",
            registry=self.registry,
        )

        self.current_mounts: set[str] | None = None
        # Label children looked up once: labels() takes a lock and a dict lookup, and
        # these counters move on every request of the hot path.
        self._by_status: dict[int, Any] = {}
        self.cache_hit = self.cache.labels("hit")
        self.cache_miss = self.cache.labels("miss")
        self.cache_miss_remembered = self.cache.labels("miss_remembered")
        self.before_render: list[Callable[[], None]] = []
        """Called before every scrape: the server's batched counts are added here."""
        self.before_render.append(self._count_exhausted)

    def _count_exhausted(self) -> None:
        """Add the exhaustions ``app.federation.exhaustion`` counted since the last scrape."""
        for name, total in list(EXHAUSTED.items()):
            seen = self._exhausted_seen.get(name, 0)
            if total > seen:
                self.exhausted.labels(name).inc(total - seen)
                self._exhausted_seen[name] = total

    def count_response(self, status: int, body_bytes: int, requests: int = 1) -> None:
        """Count answered requests of one status and the body bytes they sent.

        Args:
            status: the status code.
            body_bytes: body bytes sent, in bytes.
            requests: how many requests (the server's hot path counts in batches).
        """
        child = self._by_status.get(status)
        if child is None:
            child = self._by_status[status] = self.requests.labels(str(status))
        child.inc(requests)
        if body_bytes:
            self.body_bytes.inc(body_bytes)

    def keep_mounts(self, current: Iterable[str], removed: Iterable[str]) -> None:
        """After a reload: show only ``current`` mounts; remove the ``removed`` ones' label
        sets (in multiprocess mode, where that is not possible, render() leaves them out).
        """
        self.current_mounts = set(current)
        if self._multiprocess:
            return
        for name in set(removed) - self.current_mounts:
            for outcome in ("hit", "miss", "error", "timeout", "skipped"):
                self.lookups.remove(name, outcome)
            for metric in (self.lookup_seconds, self.mount_up):
                metric.remove(name)

    def render(self) -> bytes:
        """The current values in Prometheus' text exposition format (all workers')."""
        for flush in self.before_render:
            flush()
        if self.registry is not None:
            return generate_latest(self.registry)
        registry = CollectorRegistry()
        MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(_CurrentMounts(registry, self.current_mounts))


def observe_many(histogram: Histogram, amount: float, count: int) -> None:
    """Observe ``amount`` ``count`` times in a labelled histogram, at the cost of one.

    A batch of lookups on a mount ends with one duration for all its names; one
    ``observe`` per name was the largest cost of the metrics on the cold path.
    prometheus-client has no observe-n, so this adds ``amount x count`` to the sum and
    ``count`` to the bucket ``observe`` would pick, through the child's own ``_sum``,
    ``_upper_bounds`` and ``_buckets`` (``tests/unit/test_metrics_mounts.py`` checks the
    exposition matches ``count`` calls), and falls back to ``count`` calls of
    ``observe`` where those attributes are missing.

    Args:
        histogram: a labelled child (``Histogram.labels(...)``).
        amount: the value, in its unit (seconds here).
        count: how many observations (0: none).
    """
    buckets = getattr(histogram, "_buckets", None)
    bounds = getattr(histogram, "_upper_bounds", None)
    total = getattr(histogram, "_sum", None)
    if buckets is None or bounds is None or total is None or len(buckets) != len(bounds):
        for _ in range(count):
            histogram.observe(amount)
        return
    if count <= 0:
        return
    total.inc(amount * count)
    for i, bound in enumerate(bounds):
        if amount <= bound:
            buckets[i].inc(count)
            break


class _CurrentMounts:
    """A registry view without the samples of mounts that are no longer configured."""

    def __init__(self, registry: CollectorRegistry, mounts: set[str] | None) -> None:
        self._registry = registry
        self._mounts = mounts

    def collect(self) -> Iterable[Metric]:
        """The registry's metrics, filtered by the ``mount`` label."""
        for metric in self._registry.collect():
            if self._mounts is not None:
                metric.samples = [
                    s
                    for s in metric.samples
                    if "mount" not in s.labels or s.labels["mount"] in self._mounts
                ]
            yield metric

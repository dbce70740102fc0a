"""Metric label sets of removed mounts leave /metrics on reload; a histogram observed n
times at once (app.ops.metrics)."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Histogram, generate_latest

from app.ops.metrics import MULTIPROC_ENV, Metrics, observe_many

SCRIPT = """
from app.ops.metrics import Metrics
metrics = Metrics()
for name in ("kept", "removed"):
    metrics.mount_up.labels(name).set(1)
    metrics.lookups.labels(name, "hit").inc()
metrics.keep_mounts(["kept"], ["removed"])
print(metrics.render().decode())
"""


def test_removed_mounts_label_sets_are_removed() -> None:
    """One process: keep_mounts removes the removed mount's label sets."""
    metrics = Metrics()
    for name in ("kept", "removed"):
        metrics.mount_up.labels(name).set(1)
        metrics.lookups.labels(name, "hit").inc()
        metrics.lookup_seconds.labels(name).observe(0.01)
    metrics.keep_mounts(["kept"], ["removed"])
    text = metrics.render().decode()
    assert 'mount="kept"' in text and 'mount="removed"' not in text


def test_removed_mounts_are_left_out_in_multiprocess_mode(tmp_path: Path) -> None:
    """Multiprocess mode (values in files, no removal there): the scrape leaves them out."""
    env = {**os.environ, MULTIPROC_ENV: str(tmp_path)}
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert 'vend_mount_up{mount="kept"} 1.0' in result.stdout
    assert 'mount="removed"' not in result.stdout
    assert any(path.name.startswith("gauge_livemin") for path in tmp_path.iterdir())


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.floats(min_value=0.0, max_value=100.0, allow_nan=False),
            st.integers(min_value=0, max_value=50),
        ),
        max_size=8,
    )
)
def test_observe_many_is_count_calls_of_observe(batches: list[tuple[float, int]]) -> None:
    """``observe_many(child, amount, count)`` exposes exactly what ``count`` calls of
    ``observe(amount)`` do: the same buckets (bounds included), count and sum."""
    exposed = []
    for many in (False, True):
        registry = CollectorRegistry()
        histogram = Histogram("t_seconds", "t", ["mount"], registry=registry)
        child = histogram.labels("m1")
        for amount, count in batches:
            if many:
                observe_many(child, amount, count)
            else:
                for _ in range(count):
                    child.observe(amount)
        exposed.append(generate_latest(registry).decode())
    by_many = dict(line.rsplit(" ", 1) for line in exposed[1].splitlines() if line[0] != "#")
    by_one = dict(line.rsplit(" ", 1) for line in exposed[0].splitlines() if line[0] != "#")
    assert by_many.keys() == by_one.keys()
    for key, value in by_one.items():  # the sum: one product against many additions
        assert math.isclose(float(by_many[key]), float(value), rel_tol=1e-9, abs_tol=1e-9)

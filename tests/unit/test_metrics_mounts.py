"""Metric label sets of removed mounts leave /metrics on reload (app.ops.metrics)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from app.ops.metrics import MULTIPROC_ENV, Metrics

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

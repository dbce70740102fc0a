"""require_mountpoint: never serve the directory beneath an export that came unmounted."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytestmark = [
    pytest.mark.live,
    pytest.mark.skipif(
        os.geteuid() != 0 or shutil.which("mount") is None, reason="mounting needs root"
    ),
]


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A tmpfs mounted on a directory of tmp_path; unmounted at teardown if still there."""
    point = tmp_path / "export"
    point.mkdir()
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m", "vendtest", str(point)], check=True, timeout=10
    )
    try:
        yield point
    finally:
        if os.path.ismount(point):
            subprocess.run(["umount", "-l", str(point)], check=False, timeout=10)


def test_unmounted_export_is_never_served_from_beneath(tmpfs: Path, start_vend: Any) -> None:
    """After the export is unmounted, the copy beneath it is never served; 503 until remounted."""
    (tmpfs / "page.html").write_bytes(b"on the export")
    settings = {"timeouts": {"probe_interval_s": 0.3}, "cache": {"ttl_s": 0.2, "miss_ttl_s": 0.1}}
    proc = start_vend(
        [{"path": str(tmpfs), "name": "export", "require_mountpoint": True}], settings
    )
    with proc.client() as client:
        assert client.get("/page.html").content == b"on the export"
        subprocess.run(["umount", str(tmpfs)], check=True, timeout=10)
        (tmpfs / "page.html").write_bytes(b"beneath the export")  # on the parent filesystem
        (tmpfs / "other.html").write_bytes(b"beneath too")
        deadline = time.monotonic() + 3
        statuses = set()
        while time.monotonic() < deadline:
            for name in ("/page.html", "/other.html"):
                response = client.get(name)
                assert b"beneath" not in response.content
                if response.status_code == 200:  # the cache, within cache.ttl_s
                    assert response.content == b"on the export"
                statuses.add(response.status_code)
            time.sleep(0.05)
        assert statuses <= {200, 503, 404} and 503 in statuses
        health = client.get("/.well-known/vend/health").json()
        assert health["mounts"][0]["state"] == "down"
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=4m", "vendtest", str(tmpfs)],
            check=True,
            timeout=10,
        )
        (tmpfs / "page.html").write_bytes(b"remounted")
        deadline = time.monotonic() + 5
        while client.get("/page.html").content != b"remounted":
            assert time.monotonic() < deadline, "served again after the export came back"
            time.sleep(0.1)

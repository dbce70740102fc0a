"""require_mountpoint: never serve the directory beneath an export that came unmounted."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import VEND

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


@pytest.fixture
def bind_mount(tmp_path: Path) -> Iterator[Path]:
    """A directory of tmp_path bind-mounted on itself (same filesystem); unmounted after."""
    point = tmp_path / "bound"
    point.mkdir()
    (point / "page.html").write_bytes(b"through the bind mount")
    subprocess.run(["mount", "--bind", str(point), str(point)], check=True, timeout=10)
    try:
        yield point
    finally:
        subprocess.run(["umount", "-l", str(point)], check=False, timeout=10)


def test_bind_mount_counts_as_a_mount_point(bind_mount: Path, start_vend: Any) -> None:
    """A bind mount of the same filesystem is a mount point (from /proc/self/mountinfo):
    `vend check` says so and require_mountpoint serves it."""
    assert not os.path.ismount(bind_mount)  # what the old check looked at
    mounts = json.dumps([{"path": str(bind_mount), "name": "bound", "require_mountpoint": True}])
    env = {k: v for k, v in os.environ.items() if not k.startswith("VEND_")}
    check = subprocess.run(
        [str(VEND), "check"],
        env={**env, "VEND_MOUNTS": mounts},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert check.returncode == 0, check.stdout + check.stderr
    assert "ENOTMOUNTPOINT" not in check.stdout
    proc = start_vend([{"path": str(bind_mount), "name": "bound", "require_mountpoint": True}])
    with proc.client() as client:
        assert client.get("/page.html").content == b"through the bind mount"


def test_nested_mount_below_a_mount_is_refused(tmpfs: Path, start_vend: Any) -> None:
    """A file on a mount nested below a require_mountpoint mount is absent (by mount ID),
    even a bind mount of the same filesystem; the mount itself stays up."""
    (tmpfs / "top.html").write_bytes(b"on the export")
    (tmpfs / "inner").mkdir()
    (tmpfs / "inner" / "page.html").write_bytes(b"on the export too")
    (tmpfs / "other").mkdir()
    (tmpfs / "other" / "page.html").write_bytes(b"seen through the nested bind mount")
    subprocess.run(
        ["mount", "--bind", str(tmpfs / "other"), str(tmpfs / "inner")], check=True, timeout=10
    )
    try:
        proc = start_vend(
            [{"path": str(tmpfs), "name": "export", "require_mountpoint": True}],
            {"cache": {"ttl_s": 0.2, "miss_ttl_s": 0.1}},
        )
        with proc.client() as client:
            assert client.get("/top.html").content == b"on the export"
            nested = client.get("/inner/page.html")
            assert nested.status_code == 404 and b"nested" not in nested.content
            health = client.get("/.well-known/vend/health").json()
            assert health["mounts"][0]["state"] == "up"
    finally:
        subprocess.run(["umount", "-l", str(tmpfs / "inner")], check=False, timeout=10)

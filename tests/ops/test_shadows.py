"""``vend shadows`` on real trees: equal, different, same-size-but-different, newer and
hung copies; the report's groups, the summary and the exit statuses."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import pytest

from .conftest import run_vend

pytestmark = pytest.mark.live

OLD, NEW = 1_600_000_000, 1_700_000_000
NEEDS_FUSE = pytest.mark.skipif(
    not os.path.exists("/dev/fuse") or shutil.which("fusermount3") is None,
    reason="needs /dev/fuse and fusermount3 (tests/run installs fuse3)",
)


def _put(path: Path, body: bytes, mtime_s: int = OLD) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(body)
    os.utime(path, (mtime_s, mtime_s))


@pytest.fixture
def trees(tmp_path: Path) -> list[Path]:
    """Three mounts holding equal, different, same-size, newer and triple copies."""
    m1, m2, m3 = (tmp_path / n for n in ("m1", "m2", "m3"))
    for m in (m1, m2, m3):
        m.mkdir()
    _put(m1 / "equal.txt", b"same")
    _put(m2 / "equal.txt", b"same")
    _put(m1 / "docs" / "different.txt", b"short")
    _put(m2 / "docs" / "different.txt", b"a longer copy")
    _put(m1 / "samesize.txt", b"AAAA")
    _put(m3 / "samesize.txt", b"BBBB")
    _put(m1 / "newer.txt", b"old text")
    _put(m3 / "newer.txt", b"new text", NEW)
    _put(m1 / "triple.txt", b"1")
    _put(m2 / "triple.txt", b"1")
    _put(m3 / "triple.txt", b"1")
    _put(m1 / "only-m1.txt", b"x")
    _put(m2 / "deep" / "er" / "only-m2.txt", b"x")
    return [m1, m2, m3]


def _groups(report: Path) -> dict[str, dict[str, Any]]:
    return {g["name"]: g for g in map(json.loads, report.read_text().splitlines())}


def test_shadows_lists_each_group_once_with_its_differences(
    trees: list[Path], tmp_path: Path
) -> None:
    """Each name on several mounts is one group: the winner, the shadowed copies, whether
    they differ (size or mtime) and whether a shadowed copy is newer; exit 1."""
    report = tmp_path / "shadows.jsonl"
    result = run_vend(
        "shadows",
        "--report",
        str(report),
        "--no-progress",
        env={"VEND_MOUNTS": json.dumps([str(m) for m in trees])},
    )
    assert result.returncode == 1, result.stdout + result.stderr
    groups = _groups(report)
    assert set(groups) == {
        "equal.txt",
        "docs/different.txt",
        "samesize.txt",
        "newer.txt",
        "triple.txt",
    }
    summary = {
        name: (g["winner"]["mount"], [c["mount"] for c in g["shadowed"]], g["differs"], g["newer"])
        for name, g in groups.items()
    }
    assert summary == {
        "equal.txt": ("m1", ["m2"], False, False),
        "docs/different.txt": ("m1", ["m2"], True, False),
        "samesize.txt": ("m1", ["m3"], False, False),  # same size and mtime: only --hash tells
        "newer.txt": ("m1", ["m3"], True, True),
        "triple.txt": ("m1", ["m2", "m3"], False, False),
    }
    assert groups["docs/different.txt"]["shadowed"][0]["size"] == 13
    assert (
        "5 names on more than one mount; 2 with differing copies; 1 where a shadowed"
        in result.stdout
    )
    assert "m2: walked, 4 files in 4 directories" in result.stdout


def test_shadows_hash_compares_contents(trees: list[Path], tmp_path: Path) -> None:
    """With --hash, copies of the same size and time but other bytes differ."""
    report = tmp_path / "shadows.jsonl"
    result = run_vend(
        "shadows",
        "--hash",
        "--report",
        str(report),
        "--no-progress",
        env={"VEND_MOUNTS": json.dumps([str(m) for m in trees])},
    )
    assert result.returncode == 1
    groups = _groups(report)
    assert groups["samesize.txt"]["differs"] is True
    assert groups["equal.txt"]["differs"] is False
    assert len(groups["equal.txt"]["winner"]["sha256"]) == 64


def test_shadows_exit_0_when_copies_are_equal(tmp_path: Path) -> None:
    """Only equal copies: exit 0; an invalid setting: exit 2."""
    m1, m2 = tmp_path / "m1", tmp_path / "m2"
    _put(m1 / "a.txt", b"a")
    _put(m2 / "a.txt", b"a")
    result = run_vend("shadows", env={"VEND_MOUNTS": json.dumps([str(m1), str(m2)])})
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 names on more than one mount; 0 with differing copies" in result.stdout
    assert run_vend("shadows", env={"VEND_MOUNTS": "[]"}).returncode == 2


@NEEDS_FUSE
@pytest.mark.fuse
def test_shadows_reports_a_hung_mount_instead_of_waiting(trees: list[Path], faultfs: Any) -> None:
    """A mount whose copy hangs times out once (fs_op_s), is reported, and the run ends
    with exit 3 well before the hang would."""
    m1, m2, m3 = trees
    _put(m1 / "hung.txt", b"on m1")
    _put(m2 / "hung.txt", b"on m2")
    fs = faultfs(m1)
    fs.inject("getattr", "/hung.txt", "hang")
    started = time.monotonic()
    result = run_vend(
        "shadows",
        "--no-progress",
        env={
            "VEND_MOUNTS": json.dumps([str(fs.mountpoint), str(m2), str(m3)]),
            "VEND_TIMEOUTS__FS_OP_S": "1",
        },
        timeout_s=60,
    )
    elapsed = time.monotonic() - started
    assert result.returncode == 3, result.stdout + result.stderr
    assert "failed (ETIMEDOUT): results involving it are incomplete" in result.stdout
    assert elapsed < 30, elapsed


@NEEDS_FUSE
@pytest.mark.fuse
def test_shadows_reports_a_walk_that_hangs(trees: list[Path], faultfs: Any) -> None:
    """A shadowed mount whose directory listing hangs is reported as not fully walked
    (exit 3); what was found before the hang is still reported."""
    m1, m2, m3 = trees
    fs = faultfs(m2)
    fs.inject("opendir", "/deep/er", "hang")
    result = run_vend(
        "shadows",
        "--no-progress",
        env={
            "VEND_MOUNTS": json.dumps([str(m1), str(fs.mountpoint), str(m3)]),
            "VEND_TIMEOUTS__FS_OP_S": "1",
        },
        timeout_s=60,
    )
    assert result.returncode == 3, result.stdout + result.stderr
    name = fs.mountpoint.name
    assert f"{name}: not fully walked (ETIMEDOUT)" in result.stdout
    assert "m3: walked" in result.stdout

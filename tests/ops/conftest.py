"""Content trees and old-server logs for the ``vend verify`` and ``vend shadows`` tests.

Trees live in a directory any user may traverse (``--user nobody`` must reach them), and
logs are written in Apache's own formats, escapes included, as the old server left them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support import VEND
from tests.tools.fuse_fixtures import faultfs

__all__ = ["faultfs"]

MTIME_S = 1_700_000_000
"""Modification time given to every file of the tree, seconds."""


@dataclass
class Site:
    """Two mounts and what the test knows of them."""

    base: Path
    m1: Path
    m2: Path


@pytest.fixture
def site() -> Iterator[Site]:
    """m1 and m2 with served, shadowed, renamed and root-only files, traversable by anyone."""
    base = Path(tempfile.mkdtemp(prefix="vend-verify-"))
    base.chmod(0o755)
    m1, m2 = base / "m1", base / "m2"
    files = {
        m1 / "docs" / "a.html": b"<p>a</p>\n",
        m1 / "docs" / "space name.html": b"x\n",
        m1 / "listed.txt": b"exactly this\n",
        m1 / "secret.txt": b"root only\n",
        m1 / "shared.txt": b"m1 copy\n",
        m2 / "shared.txt": b"m2 copy, longer\n",
        m2 / "only-m2.css": b"body{}\n",
        m2 / "renamed" / "new-name.html": b"new\n",
        m2 / "docs" / "b.htm": b"b\n",
        m2 / "Photos" / "Cat.JPG": b"cat\n",
        m2 / "elsewhere" / "moved.pdf": b"%PDF\n",
        m2 / "dir" / "index.html": b"index\n",
    }
    for path, body in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(body)
        os.utime(path, (MTIME_S, MTIME_S))
    for directory in (base, *[p for p in base.rglob("*") if p.is_dir()]):
        directory.chmod(0o755)
    for path in files:
        path.chmod(0o644)
    (m1 / "secret.txt").chmod(0o600)
    try:
        yield Site(base, m1, m2)
    finally:
        shutil.rmtree(base)


def combined(
    target: str | bytes, *, status: int = 200, method: str = "GET", client: str = "192.0.2.7"
) -> bytes:
    """One Apache ``combined`` log line (the request line given already escaped)."""
    raw = target.encode() if isinstance(target, str) else target
    return (
        client.encode()
        + b' - - [05/Dec/2026:10:00:00 +0000] "'
        + method.encode()
        + b" "
        + raw
        + b' HTTP/1.1" '
        + str(status).encode()
        + b' 512 "https://example.org/?q=\\"x\\"" "Mozilla/5.0 (X11; \\xff)"\n'
    )


def run_vend(
    *args: str, env: dict[str, str], cwd: Path | None = None, timeout_s: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run the ``vend`` command with only ``env``'s VEND_* settings; capture its output."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("VEND_")}
    return subprocess.run(
        [str(VEND), *args],
        env={**clean, **env},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )

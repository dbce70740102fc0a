"""Real input: every regular file under /usr/share/doc, spread over three mounts, served exact."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from app.http.names import compile_pattern, is_allowed_name

pytestmark = pytest.mark.live

DOC = Path("/usr/share/doc")


def test_usr_share_doc_round_robin_over_three_mounts(tmp_path: Path, start_vend: Any) -> None:
    """The default pattern accepts >= 99% of the names, and every accepted one is byte-exact."""
    files = sorted(p for p in DOC.rglob("*") if p.is_file() and not p.is_symlink())
    if len(files) < 200:
        pytest.skip("this machine has too few files under /usr/share/doc to be a real sample")
    mounts = [tmp_path / f"m{i}" for i in range(3)]
    names = []
    for index, source in enumerate(files):
        name = source.relative_to(DOC).as_posix()
        target = mounts[index % 3] / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
        names.append((name, target))
    pattern = compile_pattern("default")
    accepted = [(n, t) for n, t in names if is_allowed_name(n, pattern)]
    assert len(accepted) >= 0.99 * len(names), [
        n for n, _ in names if not is_allowed_name(n, pattern)
    ][:20]

    proc = start_vend([str(m) for m in mounts])
    mismatches = []
    with proc.client() as client:
        for name, target in accepted:
            response = client.get("/" + name)
            if response.status_code != 200 or response.content != target.read_bytes():
                mismatches.append((name, response.status_code))
    assert mismatches == []
    assert sum(os.path.getsize(t) for _, t in accepted) > 0

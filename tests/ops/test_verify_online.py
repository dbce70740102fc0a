"""``vend verify --url`` against a real ``vend serve``: the same links requested over HTTP,
with HEAD or a one-byte range, through ``--connect-to`` keeping the legacy Host."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from .conftest import MTIME_S, Site, run_vend

pytestmark = pytest.mark.live


def _report(path: Path) -> dict[str, tuple[str, str | None]]:
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    return {row["path"]: (row["outcome"], row["detail"]) for row in rows}


@pytest.mark.parametrize("method", ["head", "range"])
def test_online_outcomes_by_path(site: Site, start_vend: Any, method: str) -> None:
    """Served, differs, redirected (the map, followed once), refused (400) and not found
    come from the front's answers; --connect-to reaches it under the legacy name."""
    redirects = site.base / "redirects.txt"
    redirects.write_text("/old/page.html /renamed/new-name.html\n")
    proc = start_vend([site.m1, site.m2], {"redirect_map": str(redirects)})
    links = site.base / "links.txt"
    links.write_text(
        "/docs/a.html?v=1\n/only-m2.css\n/old/page.html\n/docs/space%20name.html\n"
        "/gone.html\n/gone.html\n/a/../docs/a.html\n"
    )
    listing = site.base / "listing.tsv"
    listing.write_text(f"shared.txt\t99\t{MTIME_S}\n")
    report = site.base / "report.jsonl"
    result = run_vend(
        "verify",
        str(links),
        str(listing),
        "--all",
        "--no-progress",
        "--method",
        method,
        "--url",
        "http://legacy.example.org",
        "--connect-to",
        f"127.0.0.1:{proc.port}",
        "--report",
        str(report),
        env={},
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert _report(report) == {
        "/docs/a.html": ("served", None),
        "/only-m2.css": ("served", None),
        "/shared.txt": ("differs", "size 8 != 99"),
        "/old/page.html": ("redirected", "/renamed/new-name.html"),
        "/docs/space%20name.html": ("refused", "HTTP 400"),
        "/gone.html": ("not found", "HTTP 404"),
        "/a/../docs/a.html": ("refused", "HTTP 400"),  # sent as is, never tidied
    }


def test_online_unavailable_and_exit_0(site: Site, start_vend: Any) -> None:
    """503 from a front whose mount is failing is unavailable; a run where every link is
    served exits 0; a front that does not answer is unavailable too."""
    proc = start_vend([site.m1, site.m2, site.base / "not-mounted"])
    links = site.base / "links.txt"
    links.write_text("/docs/a.html\n/gone.html\n")
    report = site.base / "report.jsonl"
    result = run_vend(
        "verify", str(links), "--no-progress", "--url", proc.url, "--report", str(report), env={}
    )
    assert result.returncode == 1
    assert _report(report) == {"/gone.html": ("unavailable", "HTTP 503")}
    good = site.base / "good.txt"
    good.write_text("/docs/a.html\n/only-m2.css\n")
    assert run_vend("verify", str(good), "--url", proc.url, env={}).returncode == 0
    proc.stop()
    down = run_vend("verify", str(good), "--url", proc.url, "--report", str(report), env={})
    assert down.returncode == 1
    assert {v[0] for v in _report(report).values()} == {"unavailable"}


def test_online_bad_options_exit_2(site: Site) -> None:
    """--connect-to without --url, or malformed, is exit 2 with one line."""
    links = site.base / "links.txt"
    links.write_text("/docs/a.html\n")
    alone = run_vend("verify", str(links), "--connect-to", "127.0.0.1:1", env={})
    assert alone.returncode == 2 and "need --url" in alone.stderr
    bad = run_vend(
        "verify", str(links), "--url", "http://x.example", "--connect-to", "nohost", env={}
    )
    assert bad.returncode == 2 and "expected HOST:PORT" in bad.stderr

"""``vend verify`` and ``vend serve`` never disagree: every request-target of the
hostile-path corpus (and some ordinary ones) gets the same outcome offline as the
status a real server answers for it on the same mounts."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.support import get_raw, read_hostile_paths

from .conftest import Site, run_vend

pytestmark = pytest.mark.live

OUTCOME_OF_STATUS = {
    200: "served",
    301: "redirected",
    400: "refused",
    414: "refused",  # over the server's request-target limit; offline: rule too_long
    403: "forbidden",
    404: "not found",
    503: "unavailable",
}
ORDINARY = [
    "/docs/a.html",
    "/only-m2.css",
    "/shared.txt",
    "/gone.html",
    "/dir",
    "/dir/",
    "/",
    "/old/page.html",
]


def _sendable(raw: str) -> bool:
    """Targets a client sends as one request line and a list file holds as one line
    (no raw spaces, controls or non-ASCII, which the HTTP parser refuses before vend)."""
    return (
        raw.startswith("/")
        and raw.isascii()
        and raw.isprintable()
        and " " not in raw
        and "#" not in raw
    )


def test_offline_outcomes_match_what_the_server_answers(site: Site, start_vend: Any) -> None:
    """For each target, the outcome vend verify reports offline is the one the status of
    a real vend serve over the same mounts, index names and redirect map implies."""
    redirects = site.base / "redirects.txt"
    redirects.write_text("/old/page.html /renamed/new-name.html\n")
    settings = {"redirect_map": str(redirects), "index_names": ["index.html"]}
    targets = [row["raw_path"] for row in read_hostile_paths() if _sendable(row["raw_path"])]
    targets = list(dict.fromkeys(t.split("?", 1)[0] for t in [*ORDINARY, *targets]))
    assert len(targets) > 50
    links = site.base / "links.txt"
    links.write_text("".join(f"{t}\n" for t in targets))
    report = site.base / "r.jsonl"
    env = {
        "VEND_MOUNTS": json.dumps([str(site.m1), str(site.m2)]),
        "VEND_REDIRECT_MAP": str(redirects),
        "VEND_INDEX_NAMES": '["index.html"]',
    }
    run_vend("verify", str(links), "--all", "--report", str(report), "--no-progress", env=env)
    offline = {r["path"]: r["outcome"] for r in map(json.loads, report.read_text().splitlines())}
    proc = start_vend([site.m1, site.m2], settings)
    served = {t: OUTCOME_OF_STATUS.get(get_raw(proc.port, t.encode()).status) for t in targets}
    assert offline == served

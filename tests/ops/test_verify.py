"""``vend verify`` offline: real logs, lists and listings against real trees, every outcome
asserted by path, bad input counted, exit statuses, ``--suggest``."""

from __future__ import annotations

import csv
import gzip
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import pytest

from .conftest import MTIME_S, Site, combined, run_vend

pytestmark = pytest.mark.live

ROOT_ONLY = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to check access as nobody")


def _env(site: Site, *extra_mounts: str, redirect_map: Path | None = None) -> dict[str, str]:
    mounts = [str(site.m1), str(site.m2), *extra_mounts]
    env = {"VEND_MOUNTS": json.dumps(mounts)}
    if redirect_map is not None:
        env["VEND_REDIRECT_MAP"] = str(redirect_map)
    return env


def _report(path: Path) -> dict[str, dict[str, object]]:
    """The JSON-lines report, keyed by path."""
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    by_path = {row["path"]: row for row in rows}
    assert len(by_path) == len(rows), "each link is reported once"
    return by_path


def _write_logs(site: Site) -> tuple[Path, Path, Path]:
    """An Apache combined log, a gzip-compressed rotated one, and a find -printf listing."""
    log = site.base / "access.log"
    lines = [
        combined("/docs/a.html?v=2", client="2001:db8::7"),
        combined("/docs/a.html", client="::1"),
        combined(b'/docs/a.html?q=\\"quoted\\"'),  # an escaped quote in the request line
        b'legacy.example.org:443 198.51.100.4 - - [05/Dec/2026:10:00:01 +0000] "GET /shared.txt HTTP/1.1" 304 0 "-" "curl/8"\n',
        combined("/only-m2.css", method="HEAD", status=206),
        combined("/docs/space%20name.html"),
        combined("/a%2Fb.html"),
        combined(b"/caf\\xc3\\xa9.html"),  # Apache's escape of raw UTF-8 bytes
        combined("/old/page.html?from=mail"),
        combined("/gone.html"),
        combined("/gone.html"),
        combined("/secret.txt"),
        combined("/docs/b.html"),
        combined("/photos/cat.jpg"),
        combined("/moved.pdf"),
        combined("/posted.html", method="POST"),
        combined("/was-404.html", status=404),
        b"this is not a log line\n",
        b"\x00\x01\x02 binary junk \xff\xfe\n",
        b'192.0.2.1 - - [05/Dec/2026:10:00:00 +0000] "GET /'
        + b"a" * 20_000
        + b' HTTP/1.1" 200 1 "-" "-"\n',
        b'192.0.2.1 - - [05/Dec/2026:10:00:00 +0000] "\\x16\\x03\\x01" 400 0 "-" "-"\n',
    ]
    log.write_bytes(b"".join(lines))
    rotated = site.base / "access.log.2.gz"
    with gzip.open(rotated, "wb") as handle:
        handle.write(combined("/docs/a.html") + combined("/gone.html"))
    listing = site.base / "listing.tsv"
    listing.write_bytes(
        f"listed.txt\t13\t{MTIME_S}.2500000000\nshared.txt\t8\t{MTIME_S - 3600}.0000000000\n".encode()
    )
    return log, rotated, listing


@ROOT_ONLY
def test_every_outcome_by_path(site: Site) -> None:
    """Each old link gets its outcome: served (by which mount), differs, redirected, refused
    (which rule), not found, forbidden (as nobody); hits add up across plain and gzip logs."""
    log, rotated, listing = _write_logs(site)
    redirects = site.base / "redirects.txt"
    redirects.write_text("# renamed in 2019\n/old/page.html /renamed/new-name.html\n")
    report = site.base / "report.jsonl"
    result = run_vend(
        "verify",
        str(log),
        str(rotated),
        str(listing),
        "--user",
        "nobody",
        "--all",
        "--report",
        str(report),
        "--no-progress",
        env=_env(site, redirect_map=redirects),
    )
    assert result.returncode == 1, result.stderr
    rows = _report(report)
    expected = {
        "/docs/a.html": ("served", "m1", None, 4),
        "/shared.txt": ("differs", "m1", None, 2),
        "/listed.txt": ("served", "m1", None, 1),
        "/only-m2.css": ("served", "m2", None, 1),
        "/old/page.html": ("redirected", "m2", None, 1),
        "/docs/space%20name.html": ("refused", None, "name_pattern", 1),
        "/a%2Fb.html": ("refused", None, "encoded_separator", 1),
        "/caf\\xc3\\xa9.html": ("refused", None, "raw_path_is_not_ascii", 1),
        "/gone.html": ("not found", None, None, 3),
        "/secret.txt": ("forbidden", None, None, 1),
        "/docs/b.html": ("not found", None, None, 1),
        "/photos/cat.jpg": ("not found", None, None, 1),
        "/moved.pdf": ("not found", None, None, 1),
    }
    got = {p: (r["outcome"], r["mount"], r["rule"], r["hits"]) for p, r in rows.items()}
    assert got == expected
    assert rows["/shared.txt"]["detail"] == f"mtime {MTIME_S} != {MTIME_S - 3600}"
    assert rows["/old/page.html"]["detail"] == "/renamed/new-name.html"
    assert "lines read" in result.stdout
    assert "method 1" in result.stdout and "status 1" in result.stdout
    for kind in ("unparsable", "binary", "too_long", "bad_request_line"):
        assert f"{kind} 1" in result.stdout, result.stdout
    assert "warning" not in result.stderr  # nobody is not root


def test_summary_counts_and_top_broken_links(site: Site) -> None:
    """The terminal shows counts and hit-weighted counts per outcome, and the most used
    broken links first; the CSV report lists only links not served."""
    links = site.base / "links.txt"
    links.write_text(
        "/docs/a.html\n"
        + "/gone.html\n" * 7
        + "https://legacy.example.org/lost.css?v=1\n/lost.css\n"
    )
    report = site.base / "report.csv"
    result = run_vend(
        "verify",
        str(links),
        "--report",
        str(report),
        "--format",
        "csv",
        "--no-progress",
        env=_env(site),
    )
    assert result.returncode == 1, result.stderr
    lines = result.stdout.splitlines()
    served = next(line for line in lines if line.startswith("served"))
    assert served.split() == ["served", "1", "33.3", "1", "10.0"]
    missing = next(line for line in lines if line.startswith("not found"))
    assert missing.split() == ["not", "found", "2", "66.7", "9", "90.0"]
    top = lines[lines.index(next(x for x in lines if x.startswith("most used"))) + 1 :]
    assert [t.split()[-1] for t in top] == ["/gone.html", "/lost.css"]
    assert [t.split()[0] for t in top] == ["7", "2"]
    with open(report, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert {(r["path"], r["hits"], r["outcome"]) for r in rows} == {
        ("/gone.html", "7", "not found"),
        ("/lost.css", "2", "not found"),
    }
    if os.geteuid() == 0:
        assert "checking access as root" in result.stderr


def test_exit_zero_when_every_link_is_served(site: Site) -> None:
    """Exit 0 when every old link is served, from a listing whose sizes and times match."""
    listing = site.base / "listing.tsv"
    listing.write_text(f"docs/a.html\t9\t{MTIME_S}\nonly-m2.css\t7\t{MTIME_S}.999\n")
    result = run_vend("verify", str(listing), "--no-progress", env=_env(site))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 distinct links, 2 hits" in result.stdout


def test_misses_output_is_a_source(site: Site) -> None:
    """The misses endpoint's JSON is read as a source, each name weighted by its count."""
    misses = site.base / "misses.json"
    misses.write_text(
        json.dumps(
            {
                "misses": [
                    {"path": "/gone.html", "status": 404, "count": 12},
                    {"path": "/docs/a.html", "status": 503, "count": 2},
                ]
            }
        )
    )
    report = site.base / "r.jsonl"
    result = run_vend(
        "verify", str(misses), "--report", str(report), "--no-progress", env=_env(site)
    )
    assert result.returncode == 1
    assert _report(report) == {
        "/gone.html": {
            "path": "/gone.html",
            "hits": 12,
            "outcome": "not found",
            "mount": None,
            "rule": None,
            "detail": None,
        }
    }


def test_unavailable_when_a_mount_fails(site: Site) -> None:
    """A name no healthy mount holds is unavailable while a mount fails; others are served."""
    links = site.base / "links.txt"
    links.write_text("/docs/a.html\n/gone.html\n")
    report = site.base / "r.jsonl"
    result = run_vend(
        "verify",
        str(links),
        "--all",
        "--report",
        str(report),
        "--no-progress",
        env=_env(site, str(site.base / "not-mounted")),
    )
    assert result.returncode == 1
    rows = _report(report)
    assert rows["/docs/a.html"]["outcome"] == "served"
    assert rows["/gone.html"]["outcome"] == "unavailable"
    assert "mount not-mounted was down at the end: ENOENT" in result.stderr


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "cannot read"),
        (b"", "no usable links"),
        (b"\x00\xff junk\nmore junk\n", "no usable links"),
    ],
    ids=["missing-file", "empty", "junk-only"],
)
def test_unusable_input_exits_2(site: Site, content: bytes | None, message: str) -> None:
    """A missing file, an empty one or one with nothing usable is exit 2 with one line."""
    source = site.base / "input.log"
    if content is not None:
        source.write_bytes(content)
    result = run_vend("verify", str(source), "--no-progress", env=_env(site))
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_bad_redirect_map_or_settings_exit_2(site: Site) -> None:
    """A redirect map whose target resolves nowhere, or invalid settings, are exit 2."""
    links = site.base / "links.txt"
    links.write_text("/docs/a.html\n")
    redirects = site.base / "redirects.txt"
    redirects.write_text("/old.html /nowhere.html\n")
    result = run_vend("verify", str(links), "--no-progress", env=_env(site, redirect_map=redirects))
    assert result.returncode == 2
    assert f"redirect map {redirects}:1: target 'nowhere.html' is on no mount" in result.stderr
    bad = run_vend("verify", str(links), env={"VEND_MOUNTS": "[]"})
    assert bad.returncode == 2 and "mounts" in bad.stderr


def test_suggest_proposes_map_lines(site: Site) -> None:
    """--suggest proposes, for names not found: the other extension spelling, another
    letter case, and the same file name in another folder; the map it writes is valid."""
    links = site.base / "links.txt"
    links.write_text("/docs/b.html\n/photos/cat.jpg\n/moved.pdf\n/moved.pdf\n/gone.html\n")
    proposals = site.base / "proposed.txt"
    result = run_vend(
        "verify", str(links), "--suggest", str(proposals), "--no-progress", env=_env(site)
    )
    assert result.returncode == 1, result.stderr
    lines = [x for x in proposals.read_text().splitlines() if not x.startswith("#")]
    assert lines == [
        "/moved.pdf /elsewhere/moved.pdf",
        "/docs/b.html /docs/b.htm",
        "/photos/cat.jpg /Photos/Cat.JPG",
    ]
    # The proposals make a valid redirect map: with it, every one of those links works.
    again = run_vend(
        "verify",
        str(links),
        "--report",
        str(site.base / "r.jsonl"),
        "--no-progress",
        env=_env(site, redirect_map=proposals),
    )
    assert again.returncode == 1
    assert list(_report(site.base / "r.jsonl")) == ["/gone.html"]


def test_user_switch_needs_root(site: Site) -> None:
    """--user naming no such user is exit 2 with one line."""
    links = site.base / "links.txt"
    links.write_text("/docs/a.html\n")
    result = run_vend("verify", str(links), "--user", "no-such-user-here", env=_env(site))
    assert result.returncode == 2
    assert "no such user" in result.stderr


def test_directories_follow_index_names(site: Site) -> None:
    """With index_names, '/dir' is redirected to '/dir/' (as serving answers 301) and
    '/dir/' is served from its index; without them both are not found."""
    links = site.base / "links.txt"
    links.write_text("/dir\n/dir/\n")
    report = site.base / "r.jsonl"
    env = {**_env(site), "VEND_INDEX_NAMES": '["index.html"]'}
    result = run_vend(
        "verify", str(links), "--all", "--report", str(report), "--no-progress", env=env
    )
    assert result.returncode == 0, result.stdout + result.stderr
    rows = _report(report)
    assert (rows["/dir"]["outcome"], rows["/dir"]["detail"]) == ("redirected", "/dir/")
    assert (rows["/dir/"]["outcome"], rows["/dir/"]["mount"]) == ("served", "m2")
    plain = run_vend("verify", str(links), "--report", str(report), "--no-progress", env=_env(site))
    assert plain.returncode == 1
    assert {p: r["outcome"] for p, r in _report(report).items()} == {
        "/dir": "not found",
        "/dir/": "not found",
    }


@pytest.mark.fuse
@pytest.mark.skipif(
    not os.path.exists("/dev/fuse") or shutil.which("fusermount3") is None,
    reason="needs /dev/fuse and fusermount3 (tests/run installs fuse3)",
)
def test_a_hung_mount_makes_links_unavailable_not_a_hung_run(site: Site, faultfs: Any) -> None:
    """Lookups on a hung first mount time out after timeouts.fs_op_s: the mount is marked
    down, names only it could hold are unavailable, the second mount's names are served,
    and the run ends long before the hang would."""
    fs = faultfs(site.m1)
    fs.inject("getattr", "/docs*", "hang")
    links = site.base / "links.txt"
    links.write_text("/docs/a.html\n/only-m2.css\n/gone.html\n")
    report = site.base / "r.jsonl"
    started = time.monotonic()
    result = run_vend(
        "verify",
        str(links),
        "--all",
        "--report",
        str(report),
        "--no-progress",
        env={
            "VEND_MOUNTS": json.dumps([str(fs.mountpoint), str(site.m2)]),
            "VEND_TIMEOUTS__FS_OP_S": "1",
            "VEND_TIMEOUTS__PROBE_INTERVAL_S": "600",
        },
        timeout_s=60,
    )
    assert time.monotonic() - started < 30
    assert result.returncode == 1, result.stdout + result.stderr
    outcomes = {p: (r["outcome"], r["mount"]) for p, r in _report(report).items()}
    assert outcomes == {
        "/docs/a.html": ("unavailable", None),
        "/only-m2.css": ("served", "m2"),
        "/gone.html": ("unavailable", None),
    }

"""Pure pieces of verify and misses: reading old links, the top-k summary and its merge,
and parsing the redirect map."""

from __future__ import annotations

import gzip
import re
import tracemalloc
from pathlib import Path

import pytest

from app.federation.redirects import RedirectMapError, parse_redirect_map
from app.http.names import DEFAULT_PATTERN, NameRefused, parse_request_path
from app.ops.misses import MissSummary, merge_snapshots
from app.ops.sources import MAX_LINE_BYTES, OldLinks, read_source

PATTERN = re.compile(DEFAULT_PATTERN)


def _read(tmp_path: Path, data: bytes, *, compress: bool = False) -> tuple[OldLinks, str]:
    path = tmp_path / "source"
    path.write_bytes(gzip.compress(data) if compress else data)
    links = OldLinks()
    return links, read_source(str(path), links)


LOG = (
    b'::1 - - [01/Jan/2026:00:00:00 +0000] "GET /a.html?x=1 HTTP/1.1" 200 1 "-" "-"\n'
    b'site.example:80 2001:db8::1 - bob [01/Jan/2026:00:00:00 +0100] "HEAD /b%20c.css HTTP/1.0" 304 - "-" "-"\n'
    b'10.0.0.1 - - [01/Jan/2026:00:00:00 +0000] "GET http://legacy.example/d.js HTTP/1.1" 206 1 "-" "-"\n'
    b'10.0.0.1 - - [01/Jan/2026:00:00:00 +0000] "GET /say\\"hi\\".html HTTP/1.1" 200 1 "-" "-"\n'
    b'10.0.0.1 - - [01/Jan/2026:00:00:00 +0000] "GET /\\xe2\\x82\\xac.html HTTP/1.1" 200 1 "-" "-"\n'
    b'10.0.0.1 - - [01/Jan/2026:00:00:00 +0000] "OPTIONS * HTTP/1.1" 200 1 "-" "-"\n'
    b'10.0.0.1 - - [01/Jan/2026:00:00:00 +0000] "GET /a.html HTTP/1.1" 500 1 "-" "-"\n'
    b'10.0.0.1 - - [01/Jan/2026:00:00:00 +0000] "-" 408 0 "-" "-"\n'
)


@pytest.mark.parametrize("compress", [False, True], ids=["plain", "gzip"])
def test_log_lines_give_targets_as_received(tmp_path: Path, compress: bool) -> None:
    """combined and vhost_combined lines (IPv6 clients, escapes, absolute-form) give each
    target without its query, as the old server received it; the rest is counted."""
    links, kind = _read(tmp_path, LOG, compress=compress)
    assert kind == ("log (gzip)" if compress else "log")
    assert links.hits == {
        b"/a.html": 1,
        b"/b%20c.css": 1,
        b"/d.js": 1,
        b'/say"hi".html': 1,
        "/€.html".encode(): 1,
    }
    assert links.stats.skipped == {"method": 1, "status": 1}
    assert links.stats.bad == {"bad_request_line": 1}


def test_bad_lines_are_counted_never_fatal(tmp_path: Path) -> None:
    """Over-long lines, binary junk and non-UTF-8 are counted and skipped; a truncated
    gzip stream ends its file without stopping the run."""
    good = b'::1 - - [01/Jan/2026:00:00:00 +0000] "GET /ok.html HTTP/1.1" 200 1 "-" "-"\n'
    data = good + b"x" * (3 * MAX_LINE_BYTES) + b"\n" + b"\x00\xff\xfe\n" + b"\xe9t\xe9\n" + good
    links, _ = _read(tmp_path, data)
    assert links.hits == {b"/ok.html": 2}
    assert links.stats.bad == {"too_long": 1, "binary": 1, "unparsable": 1}
    truncated = tmp_path / "cut.gz"
    truncated.write_bytes(gzip.compress(good * 1000)[:300])
    cut = OldLinks()
    read_source(str(truncated), cut)
    assert cut.stats.bad["corrupt_file"] == 1


def test_lists_and_listings(tmp_path: Path) -> None:
    """Plain lists keep escapes as sent and encode spaces and non-ASCII; listings encode
    file names and keep size and whole-second mtime."""
    links, kind = _read(
        tmp_path, "/a%20b.html\nhttps://legacy.example/x y.html?q\n/ü.txt\nnot a path\n".encode()
    )
    assert kind == "list"
    assert links.hits == {b"/a%20b.html": 1, b"/x%20y.html": 1, b"/%C3%BC.txt": 1}
    assert links.stats.bad == {"unparsable": 1}
    listing, kind = _read(tmp_path, b"docs/a b.html\t12\t1700000000.75\n100%.txt\t1\t5\n")
    assert kind == "listing"
    assert listing.listed == {b"/docs/a%20b.html": (12, 1_700_000_000), b"/100%25.txt": (1, 5)}


def test_summary_memory_is_bounded(tmp_path: Path) -> None:
    """200,000 distinct misses keep 256 entries in well under 1 MiB, and a frequent name
    keeps a count that never undercounts."""
    summary = MissSummary(capacity=256)
    for i in range(1000):
        summary.record(f"/warm/{i}", 404, now=1.0)
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for i in range(200_000):
        summary.record(f"/miss/{i:07d}/{'x' * 40}", 404, now=2.0)
        if i % 100 == 0:
            summary.record("/hot", 404, now=3.0)
    grown = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    assert len(summary) == 256
    assert grown < 1024 * 1024
    top = merge_snapshots([summary.snapshot()])["misses"][0]
    assert top["path"] == "/hot"
    assert top["count"] - top["error"] <= 2000 <= top["count"]


def test_merge_adds_workers_and_keeps_the_bound() -> None:
    """Merging adds counts, keeps the earliest first and latest last time, per-rule 400s
    add up, and the result holds at most ``capacity`` entries."""
    a, b = MissSummary(4), MissSummary(4)
    a.record("/x", 404, now=10.0)
    b.record("/x", 404, now=5.0)
    b.record("/x", 404, now=20.0)
    a.refuse("double_encoding")
    b.refuse("double_encoding")
    for i in range(4):
        b.record(f"/y{i}", 503, now=7.0)
    merged = merge_snapshots([a.snapshot(), b.snapshot()], capacity=3)
    assert len(merged["misses"]) == 3
    assert merged["misses"][0] == {
        "path": "/x",
        "status": 404,
        "count": 3,
        "error": 0,
        "first_seen": "1970-01-01T00:00:05Z",
        "last_seen": "1970-01-01T00:00:20Z",
    }
    assert merged["refused"] == {"double_encoding": 2}
    assert merged["total"] == 7


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("/a.html\n", ":1: expected 'old-name new-name'"),
        ("/a.html /b.html /c.html\n", ":1: expected"),
        ("/a.html /a.html\n", ":1: '/a.html' redirects to itself"),
        ("/a.html /b.html\n/a.html /c.html\n", ":2: '/a.html' is listed before, line 1"),
        ("/a.html /b.html\n/b.html /c.html\n", ":1: 'b.html' is itself redirected (line 2)"),
        ("/.env /b.html\n", "(name_pattern)"),
        ("/a%2Fb.html /b.html\n", "(encoded_separator)"),
        ("/dir/ /b.html\n", "names a directory"),
        ("/ü.html /b.html\n", "is not ASCII"),
    ],
    ids=[
        "one-field",
        "three-fields",
        "self",
        "duplicate",
        "chain",
        "pattern",
        "encoded-slash",
        "directory",
        "non-ascii",
    ],
)
def test_bad_redirect_maps_name_the_entry(text: str, error: str) -> None:
    """Each bad map is refused with one line naming file, line and the problem."""
    with pytest.raises(RedirectMapError, match=re.escape(error)) as caught:
        parse_redirect_map("map.txt", text, PATTERN)
    assert str(caught.value).startswith("redirect map map.txt:")
    assert "\n" not in str(caught.value)


def test_redirect_map_locations() -> None:
    """Comments and blank lines are skipped; names are decoded once and Locations
    re-encoded, query kept."""
    text = "# renamed\n\n/old.html  new/name+1.html # why\n/b%41d.html new/name+1.html\n"
    redirects = parse_redirect_map("m", text, PATTERN)
    assert redirects.location("bAd.html") == b"/new/name+1.html"
    assert redirects.location("old.html") == b"/new/name+1.html"
    assert redirects.location("old.html", b"a=1&b=%2F") == b"/new/name+1.html?a=1&b=%2F"
    assert redirects.location("new/name+1.html") is None


def test_refusals_name_their_rule() -> None:
    """Each fixed rule's refusal carries a short rule name; the message is unchanged."""
    with pytest.raises(NameRefused) as caught:
        parse_request_path(b"/a%252e")
    assert (str(caught.value), caught.value.rule) == ("double encoding", "double_encoding")


def test_a_file_starting_with_junk_is_still_read_as_a_log(tmp_path: Path) -> None:
    """Two hundred junk lines before the first log line do not hide the file's kind."""
    line = b'::1 - - [01/Jan/2026:00:00:00 +0000] "GET /ok.html HTTP/1.1" 200 1 "-" "-"\n'
    links, kind = _read(tmp_path, b"junk junk junk\n" * 200 + line * 3)
    assert kind == "log"
    assert links.hits == {b"/ok.html": 3}
    assert links.stats.bad == {"unparsable": 200}

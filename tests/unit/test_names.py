"""Name validation: the fixed rules and the whitelist presets (app.http.names)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.http.names import (
    DEFAULT_PATTERN,
    MAX_NAME_BYTES,
    MAX_SEGMENT_BYTES,
    MAX_SEGMENTS,
    NameRefused,
    compile_pattern,
    is_allowed_name,
    parse_request_path,
)

DEFAULT = compile_pattern("default")
STRICT = compile_pattern("strict")

VALID = [
    (b"/about.html", "about.html", False),
    (b"/css/site.css", "css/site.css", False),
    (b"/", "", True),
    (b"/docs/", "docs", True),
    (b"/caf%C3%A9.txt", "caf\u00e9.txt", False),
    (b"/a%20b.txt", "a b.txt", False),
    (b"/jquery.min.js", "jquery.min.js", False),
]


@pytest.mark.parametrize(("raw", "name", "index"), VALID, ids=[v[0].decode() for v in VALID])
def test_valid_paths_decode_once(raw: bytes, name: str, index: bool) -> None:
    """A well-formed path decodes once into a relative name."""
    parsed = parse_request_path(raw)
    assert (parsed.name, parsed.wants_index) == (name, index)


REFUSED = [
    ("no-leading-slash", b"etc/passwd"),
    ("dot-dot", b"/../etc/passwd"),
    ("dot", b"/./etc/passwd"),
    ("encoded-dot-dot", b"/%2e%2e/etc/passwd"),
    ("half-encoded", b"/.%2e/x"),
    ("encoded-slash", b"/a%2Fb"),
    ("encoded-slash-lower", b"/a%2fb"),
    ("encoded-backslash", b"/a%5cb"),
    ("double-encoding", b"/%252e%252e/x"),
    ("malformed-escape", b"/%zz/x"),
    ("truncated-escape", b"/x%2"),
    ("trailing-percent", b"/x%"),
    ("iis-u-escape", b"/%u002e/x"),
    ("nul", b"/index.html%00"),
    ("control", b"/index%09.html"),
    ("del", b"/a%7fb"),
    ("c1-control", b"/a%c2%85b"),
    ("backslash", b"/static\\..\\etc"),
    ("empty-segment", b"//etc/passwd"),
    ("inner-empty-segment", b"/a//b"),
    ("trailing-dot-dot", b"/a/.."),
    ("overlong-slash", b"/..%c0%af..%c0%afetc"),
    ("overlong-dot", b"/%e0%80%ae%e0%80%ae/x"),
    ("invalid-utf8", b"/%ff.txt"),
    ("non-ascii-raw", "/\uff0e\uff0e/etc".encode()),
    ("too-long", b"/" + b"a" * (MAX_NAME_BYTES + 1)),
    ("too-many-segments", b"/a" * 33),
    ("segment-too-long", b"/" + b"a" * 256),
]


@pytest.mark.parametrize("raw", [r[1] for r in REFUSED], ids=[r[0] for r in REFUSED])
def test_fixed_rules_refuse(raw: bytes) -> None:
    """Each fixed rule refuses its attack, whatever the whitelist."""
    with pytest.raises(NameRefused):
        parse_request_path(raw)


PATTERN_CASES = [
    ("about.html", True, True),
    ("css/site.css", True, True),
    ("images/logo-2_small.png", True, True),
    ("jquery.min.js", True, False),
    ("changelog.Debian.gz", True, False),
    ("README", True, False),
    ("libc++/copyright", True, False),
    ("Docs/Index.HTML", True, False),
    (".htaccess", False, False),
    ("a/.env", False, False),
    ("index.html.", False, False),
    ("a..b", False, False),
    ("index .html", False, False),
    ("caf\u00e9.txt", False, False),
    ("x;y.html", False, False),
    ("index.html::$DATA", False, False),
    ("index~1.htm", False, False),
    ("a.b/c.txt", True, False),
    ("", False, False),
]


@pytest.mark.parametrize(
    ("name", "default", "strict"), PATTERN_CASES, ids=[c[0] or "empty" for c in PATTERN_CASES]
)
def test_presets(name: str, default: bool, strict: bool) -> None:
    """The default preset accepts realistic legacy names; strict is the original a-z rule."""
    assert is_allowed_name(name, DEFAULT) is default
    assert is_allowed_name(name, STRICT) is strict


def test_custom_pattern_cannot_loosen_fixed_rules() -> None:
    """Even a match-everything pattern leaves dot segments and encoded slashes refused."""
    anything = compile_pattern(".*")
    for raw in (b"/../x", b"/a%2fb", b"/%00", b"//x"):
        with pytest.raises(NameRefused):
            parse_request_path(raw)
    assert is_allowed_name("any thing", anything)


@given(st.binary(max_size=200))
def test_accepted_names_never_escape(raw: bytes) -> None:
    """Property: whatever the bytes, an accepted name has no dot, empty or absolute segment."""
    try:
        parsed = parse_request_path(b"/" + raw)
    except NameRefused:
        return
    assert not parsed.name.startswith("/")
    assert "\\" not in parsed.name and "\x00" not in parsed.name
    if parsed.name:
        assert all(seg not in ("", ".", "..") for seg in parsed.name.split("/"))


def _within_limits(name: str) -> bool:
    segments = name.split("/")
    return (
        len(name) <= MAX_NAME_BYTES
        and len(segments) <= MAX_SEGMENTS
        and max(map(len, segments)) <= MAX_SEGMENT_BYTES
    )


@given(st.from_regex(DEFAULT_PATTERN, fullmatch=True).filter(_within_limits))
def test_default_pattern_names_round_trip(name: str) -> None:
    """Property: every name the default pattern matches (within the limits) parses to itself."""
    assert parse_request_path(b"/" + name.encode()).name == name


@pytest.mark.parametrize(
    ("segment", "accepted"),
    [
        (b"a" * MAX_SEGMENT_BYTES, True),
        (b"a" * (MAX_SEGMENT_BYTES + 1), False),
        (b"a" + b"%C3%A9" * (MAX_SEGMENT_BYTES // 2), True),  # 255 bytes, 128 characters
        (b"%C3%A9" * (MAX_SEGMENT_BYTES // 2 + 1), False),  # 256 bytes, 128 characters
    ],
    ids=["255-ascii", "256-ascii", "255-bytes-utf8", "256-bytes-utf8"],
)
def test_segment_limit_counts_utf8_bytes(segment: bytes, accepted: bool) -> None:
    """A segment's limit is ``MAX_SEGMENT_BYTES`` bytes of UTF-8, not characters (as
    NAME_MAX on Linux): 128 two-byte characters are one byte too many."""
    raw = b"/dir/" + segment + b"/x.html"
    if accepted:
        assert parse_request_path(raw).name.split("/")[1].encode() == _decoded(segment)
    else:
        with pytest.raises(NameRefused, match="segment too long"):
            parse_request_path(raw)


def _decoded(segment: bytes) -> bytes:
    return segment.replace(b"%C3%A9", "\u00e9".encode())

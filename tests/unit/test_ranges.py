"""Range parsing against a representation length (app.http.ranges, RFC 9110 section 14)."""

from __future__ import annotations

import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.http.ranges import MAX_RANGES, UNSATISFIABLE, ByteRange, parse_range

CASES = [
    ("first-500", "bytes=0-499", 1000, (ByteRange(0, 499),)),
    ("open-ended", "bytes=500-", 1000, (ByteRange(500, 999),)),
    ("suffix", "bytes=-200", 1000, (ByteRange(800, 999),)),
    ("suffix-longer-than-file", "bytes=-5000", 1000, (ByteRange(0, 999),)),
    ("last-clipped", "bytes=900-5000", 1000, (ByteRange(900, 999),)),
    ("two", "bytes=0-0, -1", 1000, (ByteRange(0, 0), ByteRange(999, 999))),
    ("whitespace-and-case", " Bytes=1-2 ,\t 4-5 ", 10, (ByteRange(1, 2), ByteRange(4, 5))),
    ("space-around-equals-outside-abnf", "bytes = 1-2", 10, None),
    ("space-inside-spec-outside-abnf", "bytes=1 - 2", 10, None),
    ("sign-outside-abnf", "bytes=+1-2", 10, None),
    ("superscript-digit-was-a-500", "bytes=\u00b2-3", 10, None),
    ("superscript-last-was-a-500", "bytes=1-\u00b2", 10, None),
    ("arabic-indic-digits", "bytes=\u0661-\u0662", 10, None),
    ("fullwidth-suffix", "bytes=-\uff11", 10, None),
    ("underscore-digits", "bytes=1_0-20", 100, None),
    ("empty-elements", "bytes=,1-2,", 10, (ByteRange(1, 2),)),
    ("one-unsatisfiable-one-not", "bytes=2000-3000,0-1", 1000, (ByteRange(0, 1),)),
    ("beyond-end", "bytes=1000-", 1000, UNSATISFIABLE),
    ("zero-suffix", "bytes=-0", 1000, UNSATISFIABLE),
    ("empty-file", "bytes=0-", 0, UNSATISFIABLE),
    ("empty-file-suffix", "bytes=-1", 0, UNSATISFIABLE),
    ("other-unit", "items=0-1", 1000, None),
    ("no-equals", "bytes 0-1", 1000, None),
    ("garbage", "bytes=abc", 1000, None),
    ("reversed", "bytes=5-1", 1000, None),
    ("negative", "bytes=--1", 1000, None),
    ("no-dash", "bytes=5", 1000, None),
    ("only-commas", "bytes=,,", 1000, None),
    ("non-ascii-digits", "bytes=\u0661-\u0662", 1000, None),
    ("overlapping", "bytes=0-10,5-20", 1000, None),
    (
        "too-many",
        "bytes=" + ",".join(f"{i * 2}-{i * 2}" for i in range(MAX_RANGES + 1)),
        1000,
        None,
    ),
    (
        "max-allowed",
        "bytes=" + ",".join(f"{i * 2}-{i * 2}" for i in range(MAX_RANGES)),
        1000,
        "n16",
    ),
]


@pytest.mark.parametrize(
    ("header", "size", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_parse_range(header: str, size: int, expected: object) -> None:
    """Each header yields the ranges, UNSATISFIABLE (416), or None (ignore: 200)."""
    result = parse_range(header, size)
    if expected == "n16":
        assert isinstance(result, tuple) and len(result) == MAX_RANGES
    else:
        assert result == expected


def test_content_range_is_inclusive() -> None:
    """Content-Range names the inclusive last byte and the complete length."""
    assert ByteRange(0, 499).content_range(1234) == "bytes 0-499/1234"
    assert ByteRange(0, 499).length == 500


def test_huge_headers_cost_no_cpu() -> None:
    """A Range header of thousands of ranges is ignored quickly (linear, bounded work)."""
    header = "bytes=" + ",".join(f"{i}-{i}" for i in range(100_000))
    started = time.perf_counter()
    for _ in range(100):
        assert parse_range(header, 10**9) is None
    assert time.perf_counter() - started < 1.0


@given(st.integers(0, 10**6), st.integers(0, 10**6), st.integers(1, 10**6))
def test_satisfiable_ranges_lie_inside(first: int, last: int, size: int) -> None:
    """Property: every range returned lies within the representation and is non-empty."""
    result = parse_range(f"bytes={first}-{last}", size)
    if isinstance(result, tuple):
        for r in result:
            assert 0 <= r.first <= r.last < size

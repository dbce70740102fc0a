"""Validators and preconditions (app.http.conditional, RFC 9110 sections 8.8 and 13)."""

from __future__ import annotations

from email.utils import formatdate

import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.http.conditional import (
    Outcome,
    evaluate_preconditions,
    imf_fixdate,
    is_range_applicable,
    make_validators,
    parse_http_date,
)

V = make_validators(1000, 1_700_000_000_123_456_789)
LM = V.last_modified
OLD = "Sat, 01 Jan 2000 00:00:00 GMT"
NEW = "Fri, 01 Jan 2100 00:00:00 GMT"
P, N, F = Outcome.PROCEED, Outcome.NOT_MODIFIED, Outcome.PRECONDITION_FAILED


def test_validators_come_from_size_and_mtime_only() -> None:
    """The ETag is strong and depends only on size and nanosecond mtime."""
    assert V.etag == f'"{1000:x}-{1_700_000_000_123_456_789:x}"'
    assert make_validators(1000, 1_700_000_000_123_456_789) == V
    assert make_validators(1001, 1_700_000_000_123_456_789).etag != V.etag
    assert LM == "Tue, 14 Nov 2023 22:13:20 GMT"


@given(st.integers(min_value=-(2**35), max_value=253402300799))  # year 881 to 9999
def test_imf_fixdate_is_the_standard_format(seconds: int) -> None:
    """Last-Modified is the IMF-fixdate the standard library writes (RFC 9110 5.6.7)."""
    assert imf_fixdate(seconds) == formatdate(seconds, usegmt=True)


@given(st.integers(min_value=0, max_value=253402300799))
def test_imf_fixdate_parses_back(seconds: int) -> None:
    """What vend writes as Last-Modified, it reads back as the same second."""
    assert parse_http_date(imf_fixdate(seconds)) == seconds


CASES = [
    ("none", "GET", {}, P),
    ("if-match-same", "GET", {"if_match": V.etag}, P),
    ("if-match-star", "GET", {"if_match": "*"}, P),
    ("if-match-list", "GET", {"if_match": f'"a", {V.etag}'}, P),
    ("if-match-other", "GET", {"if_match": '"other"'}, F),
    ("if-match-weak-never-strong", "GET", {"if_match": f"W/{V.etag}"}, F),
    ("if-match-malformed", "GET", {"if_match": "nonsense"}, F),
    ("ius-older", "GET", {"if_unmodified_since": OLD}, F),
    ("ius-same", "GET", {"if_unmodified_since": LM}, P),
    ("ius-invalid-ignored", "GET", {"if_unmodified_since": "yesterday"}, P),
    ("if-match-wins-over-ius", "GET", {"if_match": V.etag, "if_unmodified_since": OLD}, P),
    ("inm-same", "GET", {"if_none_match": V.etag}, N),
    ("inm-weak-matches", "HEAD", {"if_none_match": f"W/{V.etag}"}, N),
    ("inm-star", "GET", {"if_none_match": "*"}, N),
    ("inm-other", "GET", {"if_none_match": '"x", "y"'}, P),
    ("ims-same", "GET", {"if_modified_since": LM}, N),
    ("ims-newer", "GET", {"if_modified_since": NEW}, N),
    ("ims-older", "GET", {"if_modified_since": OLD}, P),
    ("ims-invalid", "GET", {"if_modified_since": "not a date"}, P),
    ("ims-rfc850", "GET", {"if_modified_since": "Friday, 01-Jan-99 00:00:00 GMT"}, P),
    ("ims-asctime", "GET", {"if_modified_since": "Fri Jan  1 00:00:00 2100"}, N),
    ("ims-repeated-joined-ignored", "GET", {"if_modified_since": f"{NEW}, {NEW}"}, P),
    ("ius-repeated-joined-ignored", "GET", {"if_unmodified_since": f"{OLD}, {OLD}"}, P),
    ("ims-other-zone-ignored", "GET", {"if_modified_since": "Fri, 01 Jan 2100 00:00:00 +0000"}, P),
    ("ims-no-seconds-ignored", "GET", {"if_modified_since": "Fri, 01 Jan 2100 00:00 GMT"}, P),
    (
        "ims-impossible-day-ignored",
        "GET",
        {"if_modified_since": "Sat, 30 Feb 2100 00:00:00 GMT"},
        P,
    ),
    ("ims-lower-case-ignored", "GET", {"if_modified_since": "fri, 01 jan 2100 00:00:00 gmt"}, P),
    (
        "ims-non-ascii-digit-ignored",
        "GET",
        {"if_modified_since": "Fri, 01 Jan 21\u0660\u0660 00:00:00 GMT"},
        P,
    ),
    ("ims-trailing-junk-ignored", "GET", {"if_modified_since": f"{NEW} x"}, P),
    ("ims-ows-allowed", "GET", {"if_modified_since": f" {NEW}\t"}, N),
    ("inm-wins-over-ims", "GET", {"if_none_match": '"x"', "if_modified_since": NEW}, P),
    ("412-before-304", "GET", {"if_match": '"x"', "if_none_match": V.etag}, F),
    (
        "ims-year-overflow",
        "GET",
        {"if_modified_since": "Mon, 01 Jan 99999999999999999999 00:00:00 GMT"},
        P,
    ),
    (
        "ius-zone-overflow",
        "GET",
        {"if_unmodified_since": "Mon, 01 Jan 2000 00:00:00 +99999999999999999999"},
        P,
    ),
    ("ims-year-10000", "GET", {"if_modified_since": "Mon, 01 Jan 10000 00:00:00 GMT"}, P),
    # RFC 9110 section 5.6.1: empty list elements are ignored.
    ("inm-empty-elements", "GET", {"if_none_match": f", {V.etag}, ,"}, N),
    ("inm-empty-between", "GET", {"if_none_match": f'"zz",,{V.etag}'}, N),
    ("inm-only-empty", "GET", {"if_none_match": ", ,"}, P),
    ("im-empty-elements", "GET", {"if_match": f",{V.etag},"}, P),
]


@pytest.mark.parametrize(
    ("method", "fields", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_preconditions_in_rfc_order(method: str, fields: dict[str, str], expected: Outcome) -> None:
    """Preconditions are evaluated in RFC 9110 section 13.2.2's order."""
    kwargs = {
        "if_match": None,
        "if_none_match": None,
        "if_modified_since": None,
        "if_unmodified_since": None,
    }
    kwargs.update(fields)
    assert evaluate_preconditions(method, V, **kwargs) is expected


@pytest.mark.parametrize(
    ("value", "applies"),
    [
        (None, True),
        (V.etag, True),
        ('"other"', False),
        (f"W/{V.etag}", False),
        (LM, True),
        (OLD, False),
        ("junk", False),
        ("Mon, 01 Jan 99999999999999999999 00:00:00 GMT", False),
    ],
)
def test_if_range(value: str | None, applies: bool) -> None:
    """If-Range honours Range only for a strongly matching ETag or the exact Last-Modified."""
    assert is_range_applicable(value, V, now_s=V.last_modified_s + 10) is applies


def test_if_range_date_is_weak_within_the_same_second() -> None:
    """A Last-Modified less than a second old is weak: a date If-Range then sends it whole."""
    assert is_range_applicable(LM, V, now_s=V.last_modified_s + 0.5) is False
    assert is_range_applicable(V.etag, V, now_s=V.last_modified_s + 0.5) is True


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("Sun, 06 Nov 1994 08:49:37 GMT", 784111777),
        ("Sunday, 06-Nov-94 08:49:37 GMT", 784111777),
        ("Sun Nov  6 08:49:37 1994", 784111777),
        ("Wed, 31 Dec 1998 23:59:60 GMT", 915148800),
        ("Sun, 06 Nov 1994 08:49:37 GMT, Sun, 06 Nov 1994 08:49:37 GMT", None),
        ("Sun Nov 6 08:49:37 1994", None),
        ("Sun, 6 Nov 1994 08:49:37 GMT", None),
        ("Sun, 06 Nov 1994 24:00:00 GMT", None),
        ("1994-11-06T08:49:37Z", None),
        ("", None),
    ],
    ids=[
        "imf-fixdate",
        "rfc850",
        "asctime",
        "leap-second",
        "two-dates",
        "asctime-day-unpadded",
        "imf-day-one-digit",
        "hour-24",
        "iso-8601",
        "empty",
    ],
)
def test_http_date_forms(value: str, expected: int | None) -> None:
    """Exactly one HTTP-date in one of RFC 9110 section 5.6.7's three forms, or nothing."""
    assert parse_http_date(value) == expected


def test_rfc850_two_digit_year_is_never_more_than_50_years_ahead() -> None:
    """A two-digit year is the latest year with those digits at most 50 years ahead."""
    now_2026 = 1_796_000_000.0  # 2026-11
    assert parse_http_date("Friday, 01-Jan-76 00:00:00 GMT", now_2026) == 3_345_062_400  # 2076
    assert parse_http_date("Thursday, 01-Jan-77 00:00:00 GMT", now_2026) == 220_924_800  # 1977


def test_last_modified_is_never_in_the_future() -> None:
    """A future modification time gives Last-Modified equal to now (RFC 9110 8.8.2.1)."""
    now = 1_800_000_000
    future = make_validators(10, (now + 3600) * 1_000_000_000, now_s=now)
    assert future.last_modified_s == now
    assert future.last_modified == "Fri, 15 Jan 2027 08:00:00 GMT"
    assert future.etag == f'"a-{(now + 3600) * 1_000_000_000:x}"'
    past = make_validators(10, (now - 5) * 1_000_000_000 + 7, now_s=now)
    assert past.last_modified_s == now - 5

"""Validators and conditional requests (RFC 9110 sections 8.8 and 13).

Pure functions: they take a representation's validators and the request's header values
and say what to answer. No I/O.

The entity-tag is strong and built only from the file's size and modification time
(``"<size hex>-<mtime ns hex>"``), never from inode or device numbers, so every vend host
that mounts the same exports gives the same ETag for the same file.
"""

from __future__ import annotations

import calendar
import functools
import re
import time
from dataclasses import dataclass
from enum import Enum
from typing import Final

_ETAG_RE: Final = re.compile(r'\s*(W/)?("[\x21\x23-\x7e\x80-\xff]*")\s*(?:,|$)')
_EMPTY_ELEMENTS_RE: Final = re.compile(r"[\s,]*")
"""Empty list elements (``, ,``), which RFC 9110 section 5.6.1 says to ignore."""


@dataclass(frozen=True, slots=True)
class Validators:
    """A representation's validators (RFC 9110 section 8.8).

    Attributes:
        etag: the strong entity-tag, quotes included, e.g. ``'"1000-17a3..."'``.
        last_modified_s: modification time in whole seconds since the epoch.
        last_modified: the same as an IMF-fixdate (RFC 9110 section 5.6.7).
    """

    etag: str
    last_modified_s: int
    last_modified: str


def make_validators(size_bytes: int, mtime_ns: int, now_s: float | None = None) -> Validators:
    """Build the validators of a file.

    Args:
        size_bytes: the file's size in bytes.
        mtime_ns: its modification time in nanoseconds since the epoch.
        now_s: the current time in seconds since the epoch; None: the clock.

    Returns:
        The strong ETag (RFC 9110 section 8.8.3: it changes whenever size or mtime do)
        and Last-Modified (section 8.8.2), which is never later than now: a
        modification time in the future is replaced by the current time, as section
        8.8.2.1 requires, so Last-Modified never exceeds the response's Date.
    """
    now = int(time.time() if now_s is None else now_s)
    seconds = min(mtime_ns // 1_000_000_000, now)
    return Validators(
        etag=f'"{size_bytes:x}-{mtime_ns:x}"',
        last_modified_s=seconds,
        last_modified=imf_fixdate(seconds),
    )


_DAY_ABBREVIATIONS: Final = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTH_ABBREVIATIONS: Final = (
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
)  # fmt: skip


@functools.lru_cache(maxsize=1024)
def imf_fixdate(seconds: int) -> str:
    """Format a time as an IMF-fixdate, e.g. ``Sun, 06 Nov 1994 08:49:37 GMT``.

    RFC 9110 section 5.6.7 (the day and month names are fixed, never the locale's). The
    last 1,024 are kept: files written together share their second, and the cold path
    formats one Last-Modified per file it looks up.

    Args:
        seconds: whole seconds since the epoch (UTC).

    Returns:
        The date, in ASCII.
    """
    t = time.gmtime(seconds)
    return (
        f"{_DAY_ABBREVIATIONS[t.tm_wday]}, {t.tm_mday:02d} {_MONTH_ABBREVIATIONS[t.tm_mon - 1]}"
        f" {t.tm_year:04d} {t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} GMT"
    )


class Outcome(Enum):
    """What the preconditions leave the request to (RFC 9110 section 13.2.2)."""

    PROCEED = "proceed"
    NOT_MODIFIED = "not_modified"  # 304
    PRECONDITION_FAILED = "precondition_failed"  # 412


_MONTHS: Final = {
    name: number
    for number, name in enumerate(
        ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"), 1
    )
}
_DAY_NAMES: Final = "(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun)"
_LONG_DAY_NAMES: Final = "(?:Monday|Tuesday|Wednesday|Thursday|Friday|Saturday|Sunday)"
_MONTH: Final = "(?P<month>" + "|".join(_MONTHS) + ")"
_TIME: Final = r"(?P<hour>[0-9]{2}):(?P<minute>[0-9]{2}):(?P<second>[0-9]{2})"
# RFC 9110 section 5.6.7: IMF-fixdate, and the obsolete rfc850-date and asctime-date that a
# recipient must also accept. Case-sensitive, single spaces, ASCII digits only.
_IMF_FIXDATE: Final = re.compile(
    rf"{_DAY_NAMES}, (?P<day>[0-9]{{2}}) {_MONTH} (?P<year>[0-9]{{4}}) {_TIME} GMT", re.ASCII
)
_RFC850_DATE: Final = re.compile(
    rf"{_LONG_DAY_NAMES}, (?P<day>[0-9]{{2}})-{_MONTH}-(?P<year>[0-9]{{2}}) {_TIME} GMT", re.ASCII
)
_ASCTIME_DATE: Final = re.compile(
    rf"{_DAY_NAMES} {_MONTH} (?P<day>[0-9]{{2}}| [0-9]) {_TIME} (?P<year>[0-9]{{4}})", re.ASCII
)


def parse_http_date(value: str, now_s: float | None = None) -> int | None:
    """Parse a field value that must be exactly one HTTP-date (RFC 9110 section 5.6.7).

    The three forms are accepted (IMF-fixdate, rfc850-date, asctime-date), with the
    optional whitespace a field value may carry around it, and nothing else: a list of
    dates (a repeated field), another zone, a missing or extra part, an impossible
    calendar date or non-ASCII digits make the whole value invalid. An rfc850-date's
    two-digit year is taken as the most recent year with those digits that is not more
    than 50 years in the future (section 5.6.7). A leap second (``:60``) is allowed.

    Args:
        value: the field value (already decoded as Latin-1).
        now_s: the current time in seconds since the epoch, for rfc850's two-digit
            years; None: the clock.

    Returns:
        Seconds since the epoch, or None when the value is not exactly one valid
        HTTP-date (sections 13.1.3 to 13.1.5 then ignore the field).
    """
    text = value.strip(" \t")
    match = _IMF_FIXDATE.fullmatch(text) or _ASCTIME_DATE.fullmatch(text)
    two_digit_year = False
    if match is None:
        match = _RFC850_DATE.fullmatch(text)
        two_digit_year = match is not None
    if match is None:
        return None
    year = int(match["year"])
    if two_digit_year:
        this_year = time.gmtime(time.time() if now_s is None else now_s).tm_year
        year += this_year - this_year % 100
        if year > this_year + 50:
            year -= 100
    month, day = _MONTHS[match["month"]], int(match["day"])
    hour, minute, second = int(match["hour"]), int(match["minute"]), int(match["second"])
    if year < 1 or not 1 <= day <= calendar.monthrange(year, month)[1]:
        return None
    if hour > 23 or minute > 59 or second > 60:
        return None
    return calendar.timegm((year, month, day, hour, minute, second, 0, 0, 0))


def _entity_tags(value: str) -> list[tuple[bool, str]] | None:
    """Parse an entity-tag list into (is_weak, opaque_tag); None if malformed.

    Empty elements are skipped (RFC 9110 section 5.6.1): ``, "a", ,`` is ``"a"``.
    """
    tags: list[tuple[bool, str]] = []
    pos = 0
    while True:
        pos = _EMPTY_ELEMENTS_RE.match(value, pos).end()  # type: ignore[union-attr]
        if pos >= len(value):
            break
        m = _ETAG_RE.match(value, pos)
        if m is None:
            return None
        tags.append((m.group(1) is not None, m.group(2)))
        pos = m.end()
    return tags


def _matches(field: str, etag: str, *, weak: bool) -> bool:
    """Evaluate If-Match (strong) or If-None-Match (weak) against the current ETag.

    RFC 9110 section 8.8.3.2: strong comparison needs both tags strong and equal; weak
    comparison needs the opaque tags equal.
    """
    if field.strip() == "*":
        return True
    tags = _entity_tags(field)
    if not tags:
        return False
    return any(tag == etag and (weak or not is_weak) for is_weak, tag in tags)


def evaluate_preconditions(
    method: str,
    validators: Validators,
    *,
    if_match: str | None,
    if_none_match: str | None,
    if_modified_since: str | None,
    if_unmodified_since: str | None,
) -> Outcome:
    """Evaluate the preconditions in the order of RFC 9110 section 13.2.2.

    Args:
        method: the request method (``"GET"`` or ``"HEAD"`` here).
        validators: the selected representation's validators.
        if_match, if_none_match, if_modified_since, if_unmodified_since: the header
            field values, or None when absent.

    Returns:
        PROCEED, NOT_MODIFIED (304) or PRECONDITION_FAILED (412).
    """
    if if_match is not None:
        if not _matches(if_match, validators.etag, weak=False):
            return Outcome.PRECONDITION_FAILED
    elif if_unmodified_since is not None:
        since = parse_http_date(if_unmodified_since)
        if since is not None and validators.last_modified_s > since:
            return Outcome.PRECONDITION_FAILED
    safe = method in ("GET", "HEAD")
    if if_none_match is not None:
        if _matches(if_none_match, validators.etag, weak=True):
            return Outcome.NOT_MODIFIED if safe else Outcome.PRECONDITION_FAILED
    elif if_modified_since is not None and safe:
        since = parse_http_date(if_modified_since)
        if since is not None and validators.last_modified_s <= since:
            return Outcome.NOT_MODIFIED
    return Outcome.PROCEED


def is_range_applicable(if_range: str | None, validators: Validators, now_s: float) -> bool:
    """Evaluate If-Range (RFC 9110 section 13.1.5).

    Args:
        if_range: the If-Range field value, or None when absent.
        validators: the selected representation's validators.
        now_s: the current time, seconds since the epoch.

    Returns:
        True when the Range header should be honoured: If-Range is absent, or its
        entity-tag strongly matches, or its date equals Last-Modified exactly and that
        Last-Modified is a strong validator, i.e. at least one second in the past
        (RFC 9110 section 8.8.2.2: a file rewritten within the same second could
        otherwise splice two versions into one resumed download).
    """
    if if_range is None:
        return True
    value = if_range.strip()
    if value.startswith(('"', "W/")):
        return value == validators.etag  # a weak tag never matches strongly
    if validators.last_modified_s > now_s - 1:
        return False
    return parse_http_date(value) == validators.last_modified_s

"""Validators and conditional requests (RFC 9110 sections 8.8 and 13).

Pure functions: they take a representation's validators and the request's header values
and say what to answer. No I/O.

The entity-tag is strong and built only from the file's size and modification time
(``"<size hex>-<mtime ns hex>"``), never from inode or device numbers, so every vend host
that mounts the same exports gives the same ETag for the same file.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC
from email.utils import formatdate, parsedate_to_datetime
from enum import Enum
from typing import Final

_ETAG_RE: Final = re.compile(r'\s*(W/)?("[\x21\x23-\x7e\x80-\xff]*")\s*(?:,|$)')


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


def make_validators(size_bytes: int, mtime_ns: int) -> Validators:
    """Build the validators of a file.

    Args:
        size_bytes: the file's size in bytes.
        mtime_ns: its modification time in nanoseconds since the epoch.

    Returns:
        The strong ETag and Last-Modified (RFC 9110 sections 8.8.2 and 8.8.3).
    """
    seconds = mtime_ns // 1_000_000_000
    return Validators(
        etag=f'"{size_bytes:x}-{mtime_ns:x}"',
        last_modified_s=seconds,
        last_modified=formatdate(seconds, usegmt=True),
    )


class Outcome(Enum):
    """What the preconditions leave the request to (RFC 9110 section 13.2.2)."""

    PROCEED = "proceed"
    NOT_MODIFIED = "not_modified"  # 304
    PRECONDITION_FAILED = "precondition_failed"  # 412


def _parse_http_date(value: str) -> int | None:
    """Seconds since the epoch of an HTTP-date, or None if it is not one."""
    try:
        parsed = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None  # RFC 9110 section 13.1: an invalid date is ignored
    if parsed.tzinfo is None:  # asctime and rfc850 forms carry no zone: GMT by definition
        parsed = parsed.replace(tzinfo=UTC)
    try:
        return int(parsed.timestamp())
    except (OverflowError, ValueError, OSError):
        return None


def _entity_tags(value: str) -> list[tuple[bool, str]] | None:
    """Parse an entity-tag list into (is_weak, opaque_tag); None if malformed."""
    tags: list[tuple[bool, str]] = []
    pos = 0
    while pos < len(value):
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
        since = _parse_http_date(if_unmodified_since)
        if since is not None and validators.last_modified_s > since:
            return Outcome.PRECONDITION_FAILED
    safe = method in ("GET", "HEAD")
    if if_none_match is not None:
        if _matches(if_none_match, validators.etag, weak=True):
            return Outcome.NOT_MODIFIED if safe else Outcome.PRECONDITION_FAILED
    elif if_modified_since is not None and safe:
        since = _parse_http_date(if_modified_since)
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
    return _parse_http_date(value) == validators.last_modified_s

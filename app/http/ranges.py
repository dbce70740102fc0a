"""Byte ranges: parsing the Range header against a representation's length.

Pure functions following RFC 9110 section 14 (Range Requests). Every byte range here is
*inclusive* at both ends, as HTTP's are: ``ByteRange(0, 499)`` is the first 500 bytes.

Outcomes of ``parse_range``:

- ``None``: ignore the header and send the whole representation (200). That is what
  RFC 9110 section 14.2 asks for a Range header that is malformed or uses another unit,
  and what it allows for requests that look like abuse: more than ``MAX_RANGES`` ranges,
  overlapping ranges, or a header longer than ``MAX_HEADER_BYTES``.
- ``Unsatisfiable``: no range overlaps the representation (416, section 15.5.17).
- a tuple of ``ByteRange``: the satisfiable ranges, in the order requested (206).

Parsing is linear in the header's length and stops early on long headers.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from typing import Final

MAX_RANGES: Final = 16
"""More ranges than this in one request are ignored (whole representation, 200)."""
MAX_HEADER_BYTES: Final = 1024
"""A longer Range header is ignored before it is parsed."""


@dataclass(frozen=True, slots=True)
class ByteRange:
    """An inclusive byte range ``first..last`` of a representation.

    Attributes:
        first: offset of the first byte, in bytes from the start.
        last: offset of the last byte (inclusive), ``first <= last``.
    """

    first: int
    last: int

    @property
    def length(self) -> int:
        """Number of bytes in the range."""
        return self.last - self.first + 1

    def content_range(self, complete_length: int) -> str:
        """The Content-Range value for this range (RFC 9110 section 14.4).

        Args:
            complete_length: the representation's length in bytes.

        Returns:
            For example ``"bytes 0-499/1234"``.
        """
        return f"bytes {self.first}-{self.last}/{complete_length}"


class Unsatisfiable:
    """Marker: the Range header is valid but no range overlaps the representation."""

    __slots__ = ()


UNSATISFIABLE: Final = Unsatisfiable()

# int-range / suffix-range of RFC 9110 section 14.1.1, ASCII digits only (``re.ASCII``
# keeps ``[0-9]`` from matching other scripts' digits, which ``str.isdigit`` accepts).
_RANGE_SPEC: Final = re.compile(r"(?P<first>[0-9]+)-(?P<last>[0-9]*)|-(?P<suffix>[0-9]+)", re.ASCII)


def _parse_spec(spec: str, size: int) -> ByteRange | Unsatisfiable | None:
    """Parse one ``range-spec``; None when malformed, UNSATISFIABLE when outside."""
    match = _RANGE_SPEC.fullmatch(spec)
    if match is None:
        return None  # anything outside the ABNF: the whole header is ignored
    first_s, last_s, suffix_s = match.group("first", "last", "suffix")
    if suffix_s is not None:  # suffix-range: the last N bytes
        suffix = int(suffix_s)
        if suffix == 0 or size == 0:
            return UNSATISFIABLE
        return ByteRange(max(0, size - suffix), size - 1)
    first = int(first_s)
    last = int(last_s) if last_s else size - 1
    if last_s and last < first:
        return None  # RFC 9110 section 14.1.1: invalid int-range
    if first >= size:
        return UNSATISFIABLE
    return ByteRange(first, min(last, size - 1))


def parse_range(header: str, size: int) -> tuple[ByteRange, ...] | Unsatisfiable | None:
    """Parse a Range header value against a representation of ``size`` bytes.

    The value must match RFC 9110 section 14.1.1's ABNF exactly: ``bytes`` (any
    letter case), ``=``, then a list of ``first-last``, ``first-`` or ``-suffix`` made
    of ASCII digits, separated by commas with optional spaces or tabs around them
    (empty list elements are allowed, section 5.6.1). Anything else (spaces inside a
    range-spec or around ``=``, non-ASCII digits, signs, another unit) makes the whole
    header ignored.

    Args:
        header: the Range field value, e.g. ``"bytes=0-499, -100"``.
        size: the representation's length in bytes.

    Returns:
        The satisfiable ranges in request order, ``UNSATISFIABLE``, or None to ignore
        the header (see the module docstring). RFC 9110 sections 14.1.1 and 14.2.
    """
    if len(header) > MAX_HEADER_BYTES:
        return None
    unit, sep, specs = header.strip(" \t").partition("=")
    if not sep or unit.lower() != "bytes":
        return None
    parts = specs.split(",", MAX_RANGES)
    if len(parts) > MAX_RANGES:
        return None
    ranges: list[ByteRange] = []
    any_valid = False
    for part in parts:
        part = part.strip(" \t")
        if not part:
            continue  # RFC 9110 section 5.6.1: empty list elements are ignored
        parsed = _parse_spec(part, size)
        if parsed is None:
            return None
        any_valid = True
        if isinstance(parsed, ByteRange):
            ranges.append(parsed)
    if not any_valid:
        return None
    if not ranges:
        return UNSATISFIABLE
    if _overlap(ranges):
        return None
    return tuple(ranges)


def _overlap(ranges: list[ByteRange]) -> bool:
    """True when any two ranges share a byte."""
    ordered = sorted(ranges, key=lambda r: r.first)
    return any(b.first <= a.last for a, b in itertools.pairwise(ordered))

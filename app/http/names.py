"""Request names: from the raw request path to a validated relative name, or a refusal.

This module is pure: no filesystem access, no I/O. It is the first gate every request
passes, and it errs on the side of refusing. A name that reaches the mounts has passed:

1. the fixed rules below, which no configured pattern can loosen, applied to the raw
   request path (ASGI ``raw_path``) and to its single percent-decoding;
2. the configured whitelist pattern (``name_pattern``), matched against the whole
   decoded name, that is the path without its leading ``/``.

Fixed rules (each refusal names the rule, for logs; responses never echo the path):

- the raw path is ASCII (RFC 9112 section 3.2: the request-target is ASCII) and starts
  with ``/``;
- every ``%`` starts a two-digit hex escape (RFC 3986 section 2.1), ``%2F`` and ``%5C``
  (encoded separators) are refused, and no ``%`` is left after one decoding (double
  encoding, CVE-2021-42013);
- the decoded bytes are valid UTF-8 (overlong forms are invalid, RFC 3629 section 10);
- no NUL or other control character (C0, DEL, C1), no backslash;
- no empty segment (``//``), no ``.`` or ``..`` segment (RFC 3986 section 5.2.4);
- at most ``MAX_NAME_BYTES`` bytes, ``MAX_SEGMENTS`` segments and ``MAX_SEGMENT_BYTES``
  bytes a segment (the Linux ``NAME_MAX``).

A trailing ``/`` asks for a directory's index; such a request is valid only where
``index_names`` is set (the caller decides), and the pattern is then matched against the
index file's name.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

MAX_NAME_BYTES: Final = 1024
"""Longest decoded name accepted, in bytes (well under PATH_MAX, 4096)."""
MAX_SEGMENTS: Final = 32
"""Most ``/``-separated segments in a name."""
MAX_SEGMENT_BYTES: Final = 255
"""Longest segment, in bytes: Linux NAME_MAX."""

DEFAULT_PATTERN: Final = (
    r"(?:[A-Za-z0-9_+-]+(?:\.[A-Za-z0-9_+-]+)*/)*[A-Za-z0-9_+-]+(?:\.[A-Za-z0-9_+-]+)*"
)
"""Default whitelist: ASCII letters, digits, ``_``, ``+`` and ``-``, with single dots
inside a segment (``jquery.min.js``, ``changelog.Debian.gz``), never at a segment's start
or end and never two in a row."""
STRICT_PATTERN: Final = r"(?:[a-z0-9_-]+/)*[a-z0-9_-]+\.[a-z0-9]+"
"""The original PHP script's rule: lower-case ``a-z``, digits, ``-``, ``_``; folders
without dots; exactly one period, before the last segment's extension."""
PRESETS: Final[dict[str, str]] = {"default": DEFAULT_PATTERN, "strict": STRICT_PATTERN}

_HEX: Final = frozenset(b"0123456789abcdefABCDEF")
_FORBIDDEN_CHARS: Final = re.compile(r"[\x00-\x1f\x7f-\x9f\\]")


class NameRefused(ValueError):
    """The request path is not an acceptable name; the reason is for logs only.

    Attributes:
        rule: the rule that refused it, as a short identifier for metrics and reports
            (``"double_encoding"``, ``"name_pattern"``...); never the path itself.
    """

    @property
    def rule(self) -> str:
        """The refusing rule: the message in lower case, words joined by ``_``."""
        return re.sub(r"[^a-z0-9]+", "_", str(self).lower()).strip("_")


@dataclass(frozen=True, slots=True)
class RequestName:
    """A validated name, relative to every mount.

    Attributes:
        name: the decoded name without leading ``/`` (``""`` for the root), never
            containing empty, ``.`` or ``..`` segments.
        wants_index: True when the path ended in ``/``: the client asks for the index
            of the directory ``name`` (``""`` being the root).
    """

    name: str
    wants_index: bool


def compile_pattern(pattern: str) -> re.Pattern[str]:
    """Compile a whitelist pattern or preset name.

    Args:
        pattern: ``"default"``, ``"strict"`` or a Python regular expression that must
            match a whole name (it is applied with ``fullmatch``).

    Returns:
        The compiled expression.

    Raises:
        re.error: the expression does not compile.
    """
    return re.compile(PRESETS.get(pattern, pattern))


def _percent_decode(raw: bytes) -> bytes:
    """Decode ``%XX`` escapes once (RFC 3986 section 2.1), refusing malformed ones."""
    if b"%" not in raw:
        return raw
    out = bytearray()
    i, n = 0, len(raw)
    while i < n:
        c = raw[i]
        if c != 0x25:  # '%'
            out.append(c)
            i += 1
            continue
        if i + 2 >= n or raw[i + 1] not in _HEX or raw[i + 2] not in _HEX:
            raise NameRefused("malformed percent-encoding")
        out.append(int(raw[i + 1 : i + 3], 16))
        i += 3
    return bytes(out)


def parse_request_path(raw_path: bytes) -> RequestName:
    """Turn a raw request path into a validated name, applying the fixed rules.

    Args:
        raw_path: the path as received (ASGI ``raw_path``), without query string.

    Returns:
        The name, relative to every mount, with whether a directory index is asked for.

    Raises:
        NameRefused: any fixed rule is broken (see the module docstring).
    """
    if not raw_path.startswith(b"/"):
        raise NameRefused("not an origin-form path")
    if len(raw_path) > 3 * MAX_NAME_BYTES + 1:
        raise NameRefused("too long")
    if not raw_path.isascii():
        raise NameRefused("raw path is not ASCII")
    lowered = raw_path.lower()
    if b"%2f" in lowered or b"%5c" in lowered:
        raise NameRefused("encoded separator")
    decoded = _percent_decode(raw_path[1:])
    if b"%" in decoded:
        raise NameRefused("double encoding")
    if len(decoded) > MAX_NAME_BYTES:
        raise NameRefused("too long")
    try:
        text = decoded.decode("utf-8", errors="strict")
    except UnicodeDecodeError:
        raise NameRefused("invalid UTF-8") from None
    if _FORBIDDEN_CHARS.search(text):
        raise NameRefused("control character or backslash")
    wants_index = text == "" or text.endswith("/")
    if wants_index:
        text = text[:-1] if text else ""
    if text:
        segments = text.split("/")
        if len(segments) > MAX_SEGMENTS:
            raise NameRefused("too many segments")
        ascii_only = decoded.isascii()  # then a segment's length is its UTF-8 length
        for segment in segments:
            if segment in ("", ".", ".."):
                raise NameRefused("empty or dot segment")
            size = len(segment) if ascii_only else len(segment.encode("utf-8"))
            if size > MAX_SEGMENT_BYTES:
                raise NameRefused("segment too long")
    return RequestName(name=text, wants_index=wants_index)


def is_allowed_name(name: str, pattern: re.Pattern[str]) -> bool:
    """Tell whether a decoded name matches the whitelist as a whole.

    Args:
        name: a name that passed ``parse_request_path`` (or an index file's name under it).
        pattern: the compiled whitelist.

    Returns:
        True when ``pattern.fullmatch(name)`` matches.
    """
    return pattern.fullmatch(name) is not None


PATTERN_REFUSAL: Final = "name pattern"
"""The message (rule ``name_pattern``) of a name the whitelist refuses."""


def request_candidates(
    raw_path: bytes, pattern: re.Pattern[str], index_names: Sequence[str]
) -> tuple[RequestName, list[str]]:
    """The names a request path asks for, in the order the mounts are searched for them.

    This is the one place that decides what a request names: serving (``app.asgi``) and
    ``vend verify`` both call it, so they cannot disagree.

    Args:
        raw_path: the path as received, without query string.
        pattern: the compiled whitelist.
        index_names: the configured index file names (``index_names``).

    Returns:
        The parsed request and its candidate names: one name, or a directory's index
        names that the whitelist admits. An empty list means 404 (a directory index
        asked for where none is configured or allowed).

    Raises:
        NameRefused: a fixed rule or the whitelist refuses the name (400); ``rule``
            names which.
    """
    request = parse_request_path(raw_path)
    if request.wants_index:
        base = f"{request.name}/" if request.name else ""
        candidates = [base + index for index in index_names]
    else:
        candidates = [request.name]
    allowed = [c for c in candidates if is_allowed_name(c, pattern)]
    if not allowed and not request.wants_index:
        raise NameRefused(PATTERN_REFUSAL)
    return request, allowed

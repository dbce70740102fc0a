"""The old links ``vend verify`` checks: read from access logs, lists, listings or misses.

A SOURCE file is one of (told apart by its first lines; gzip is recognised by its magic
bytes, whatever the file is called):

- an access log in Apache or nginx ``combined`` or Apache ``vhost_combined`` format
  (``%v:%p`` first). Only GET and HEAD requests answered 200, 206 or 304 count. The
  request line's escapes (``\\"``, ``\\\\``, ``\\xNN``) are undone, so the target is the
  bytes the old server received;
- a plain list of paths (``/docs/a.html``) or URLs (``https://legacy.example.org/a``),
  one a line;
- a listing of the old document root, ``find DIR -type f -printf '%P\\t%s\\t%T@\\n'``:
  name, size in bytes, modification time in seconds; names are percent-encoded into
  request targets;
- the JSON the misses endpoint answers (``/.well-known/vend/misses``).

Paths are distinct by request-target without query (percent-encoding kept exactly as
sent: the name rules decode once, as for a request) and weighted by their hits. Lines
that cannot be used are counted by kind (``unparsable``, ``binary``, ``too_long``,
``bad_request_line``) and skipped; nothing in the input can stop a run except a file that
cannot be opened.
"""

from __future__ import annotations

import gzip
import io
import json
import re
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Final
from urllib.parse import quote_from_bytes

MAX_LINE_BYTES: Final = 16 * 1024
"""Longest input line used, in bytes (Apache's request line limit is 8,190); longer
lines are skipped to their end and counted as ``too_long``."""
SNIFF_LINES: Final = 50
"""Recognised lines looked at to tell a file's kind."""
MAX_SNIFF_LINES: Final = 1000
"""Lines read at most (held in memory, each at most ``MAX_LINE_BYTES``) while telling a
file's kind, so a file starting with junk is still read as what it is."""
PROGRESS_LINES: Final = 10_000
"""Lines between two progress reports."""
MAX_JSON_BYTES: Final = 64 * 1024 * 1024
"""Largest misses-endpoint JSON read, in bytes."""
SERVED_STATUSES: Final = frozenset({b"200", b"206", b"304"})
METHODS: Final = frozenset({b"GET", b"HEAD"})

# host ident user [time] "request" status ... (combined), with "vhost:port " in front
# for vhost_combined. Client addresses (IPv6 included) are never parsed, only skipped.
_LOG_LINE: Final = re.compile(rb'^(?:\S+ ){3,4}\[[^\]]{1,64}\] "((?:[^"\\]|\\.)*)" (\d{3})(?: |$)')
_ESCAPE: Final = re.compile(rb"\\(x[0-9A-Fa-f]{2}|.)")
_ESCAPED: Final = {b'"': b'"', b"\\": b"\\", b"n": b"\n", b"r": b"\r", b"t": b"\t"}
_LISTING: Final = re.compile(rb"^(.+)\t(\d+)\t(\d+)(?:\.\d*)?$")
_BINARY: Final = re.compile(rb"[\x00-\x08\x0b-\x1f\x7f]")
# Bytes kept as they are when a name becomes a request target: RFC 3986's pchar and "/".
_PCHAR: Final = b"/!$&'()*+,;=:@-._~"
# Plain lists keep existing escapes ("%") as sent; only spaces and non-ASCII are encoded.
_AS_SENT: Final = _PCHAR + b'%?#[]"<>\\^`{|}'


@dataclass
class InputStats:
    """What was read.

    Attributes:
        files: each SOURCE with the kind it was read as.
        lines: lines read.
        used: lines (or entries) that gave a path.
        skipped: lines left out on purpose, by reason (``method``, ``status``).
        bad: lines that could not be used, by kind.
        progress: called with ``PROGRESS_LINES`` each time that many more lines were
            read (a progress bar), or None.
    """

    files: list[tuple[str, str]] = field(default_factory=list)
    lines: int = 0
    used: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    bad: Counter[str] = field(default_factory=Counter)
    progress: Callable[[int], None] | None = None


@dataclass
class OldLinks:
    """The distinct old links and what is known of them.

    Attributes:
        hits: request-target (bytes, without query) → hits.
        listed: request-target → (size in bytes, modification time in whole seconds),
            for paths from a listing.
        stats: what reading the sources found.
    """

    hits: dict[bytes, int] = field(default_factory=dict)
    listed: dict[bytes, tuple[int, int]] = field(default_factory=dict)
    stats: InputStats = field(default_factory=InputStats)

    def add(self, target: bytes, hits: int = 1) -> None:
        """Count ``hits`` for ``target`` (without query)."""
        self.hits[target] = self.hits.get(target, 0) + hits
        self.stats.used += 1


def _open(path: str) -> io.BufferedReader | gzip.GzipFile:
    """Open a file for reading, decompressing gzip (told by its magic bytes)."""
    raw = open(path, "rb")  # noqa: SIM115 - returned to the caller, who closes it
    if raw.peek(2)[:2] == b"\x1f\x8b":
        raw.close()
        return gzip.open(path, "rb")
    return raw


def _lines(handle: io.BufferedReader | gzip.GzipFile, stats: InputStats) -> Iterator[bytes]:
    """Lines without their end, over-long ones skipped (and counted) in bounded memory."""
    while True:
        try:
            line = handle.readline(MAX_LINE_BYTES + 1)
        except (OSError, EOFError):  # a truncated or corrupt gzip stream ends the file
            stats.bad["corrupt_file"] += 1
            return
        if not line:
            return
        stats.lines += 1
        if stats.progress is not None and stats.lines % PROGRESS_LINES == 0:
            stats.progress(PROGRESS_LINES)
        if len(line) > MAX_LINE_BYTES and not line.endswith(b"\n"):
            stats.bad["too_long"] += 1
            while line and not line.endswith(b"\n"):
                try:
                    line = handle.readline(MAX_LINE_BYTES)
                except (OSError, EOFError):
                    stats.bad["corrupt_file"] += 1
                    return
            continue
        yield line.rstrip(b"\r\n")


def _kind_of(line: bytes) -> str | None:
    if _LOG_LINE.match(line):
        return "log"
    if _LISTING.match(line):
        return "listing"
    if line.startswith((b"/", b"http://", b"https://")) and not _BINARY.search(line):
        return "list"
    return None


def _strip_query(target: bytes) -> bytes:
    return target.split(b"?", 1)[0].split(b"#", 1)[0]


def _path_of_url(url: bytes) -> bytes:
    """The path of an absolute URL (``/`` when it has none)."""
    rest = url.split(b"://", 1)[1]
    slash = rest.find(b"/")
    return rest[slash:] if slash >= 0 else b"/"


def _unescape(request_line: bytes) -> bytes:
    def one(match: re.Match[bytes]) -> bytes:
        code = match.group(1)
        if code[:1] == b"x" and len(code) == 3:
            return bytes([int(code[1:], 16)])
        return _ESCAPED.get(code, b"\\" + code)

    return _ESCAPE.sub(one, request_line)


def _read_log_line(line: bytes, links: OldLinks) -> None:
    match = _LOG_LINE.match(line)
    if match is None:
        links.stats.bad["binary" if _BINARY.search(line) else "unparsable"] += 1
        return
    parts = _unescape(match.group(1)).split(b" ")
    if len(parts) not in (2, 3) or not parts[1]:
        links.stats.bad["bad_request_line"] += 1
        return
    if parts[0] not in METHODS:
        links.stats.skipped["method"] += 1
        return
    if match.group(2) not in SERVED_STATUSES:
        links.stats.skipped["status"] += 1
        return
    target = parts[1]
    if target.startswith((b"http://", b"https://")):
        target = _path_of_url(target)
    links.add(_strip_query(target))


def _read_list_line(line: bytes, links: OldLinks) -> None:
    line = line.strip()
    if not line.startswith((b"/", b"http://", b"https://")) or _BINARY.search(line):
        links.stats.bad["binary" if _BINARY.search(line) else "unparsable"] += 1
        return
    target = _path_of_url(line) if line.startswith(b"http") else line
    links.add(quote_from_bytes(_strip_query(target), safe=_AS_SENT).encode("ascii"))


def _read_listing_line(line: bytes, links: OldLinks) -> None:
    match = _LISTING.match(line)
    if match is None:
        links.stats.bad["binary" if _BINARY.search(line) else "unparsable"] += 1
        return
    name, size, mtime = match.groups()
    target = b"/" + quote_from_bytes(name.lstrip(b"/"), safe=_PCHAR).encode("ascii")
    links.add(target)
    links.listed[target] = (int(size), int(mtime))


def _read_misses(handle: io.BufferedReader | gzip.GzipFile, links: OldLinks) -> None:
    try:
        data = json.loads(handle.read(MAX_JSON_BYTES))
        entries = data["misses"]
        for entry in entries:
            links.stats.lines += 1
            path, count = entry.get("path"), entry.get("count", 1)
            if not isinstance(path, str) or not path.startswith("/") or not isinstance(count, int):
                links.stats.bad["unparsable"] += 1
                continue
            links.add(_strip_query(path.encode("utf-8", "surrogateescape")), max(count, 1))
    except (ValueError, KeyError, TypeError, AttributeError):
        links.stats.bad["unparsable"] += 1


_READERS: Final = {"log": _read_log_line, "list": _read_list_line, "listing": _read_listing_line}


def read_source(path: str, links: OldLinks) -> str:
    """Read one SOURCE file into ``links``.

    Args:
        path: the file (plain or gzip-compressed).
        links: where paths, hits and listed sizes are added.

    Returns:
        The kind it was read as: ``"log"``, ``"list"``, ``"listing"``, ``"misses"``,
        or ``"empty"``; ``" (gzip)"`` is appended for compressed files.

    Raises:
        OSError: the file cannot be opened.
    """
    with _open(path) as handle:
        gz = " (gzip)" if isinstance(handle, gzip.GzipFile) else ""
        try:
            head = handle.peek(1)[:1]
        except (OSError, EOFError):
            head = b""
        if head == b"{":
            _read_misses(handle, links)
            kind = "misses"
        else:
            lines = _lines(handle, links.stats)
            sniffed: list[bytes] = []
            votes: Counter[str] = Counter()
            for line in lines:
                if line.strip():
                    sniffed.append(line)
                    kind_of_line = _kind_of(line)
                    if kind_of_line is not None:
                        votes[kind_of_line] += 1
                if votes.total() >= SNIFF_LINES or len(sniffed) >= MAX_SNIFF_LINES:
                    break
            kind = max(("log", "listing", "list"), key=lambda k: votes[k]) if votes else "empty"
            if kind == "empty":
                links.stats.bad["unparsable"] += len(sniffed)
            else:
                reader = _READERS[kind]
                for line in sniffed:
                    reader(line, links)
                for line in lines:
                    if line.strip():
                        reader(line, links)
    links.stats.files.append((path, kind + gz))
    return kind + gz

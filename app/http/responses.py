"""Responses: a representation's headers, preconditions and ranges, and short errors.

``send_representation`` answers a GET or HEAD for a file per RFC 9110 (sections 13.2.2,
14 and 15); where the body's bytes come from is a ``BodySource``: ``MemoryBody`` here,
or ``app.federation.bodies.FileBody`` for a file open on a mount.
"""

from __future__ import annotations

import functools
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, Protocol

from app.http.conditional import (
    Outcome,
    Validators,
    evaluate_preconditions,
    is_range_applicable,
    make_validators,
)
from app.http.ranges import ByteRange, Unsatisfiable, parse_range
from app.types import Send

ERROR_BODIES: Final[dict[int, bytes]] = {
    400: b"Bad Request\n",
    403: b"Forbidden\n",
    404: b"Not Found\n",
    405: b"Method Not Allowed\n",
    412: b"Precondition Failed\n",
    416: b"Range Not Satisfiable\n",
    500: b"Internal Server Error\n",
    503: b"Service Unavailable\n",
}
RETRY_AFTER_S: Final = 30
"""Retry-After sent with 503, in seconds: about what an NFS server takes to come back."""


@dataclass(frozen=True, slots=True)
class Sent:
    """What was answered, for the access log and metrics.

    Attributes:
        status: the HTTP status code.
        body_bytes: body bytes handed to the server (0 for HEAD).
    """

    status: int
    body_bytes: int


@dataclass(frozen=True, slots=True)
class RequestFields:
    """The request header fields a file response depends on (None when absent).

    Attributes:
        method: ``"GET"`` or ``"HEAD"``.
    """

    method: str
    range: str | None = None
    if_range: str | None = None
    if_match: str | None = None
    if_none_match: str | None = None
    if_modified_since: str | None = None
    if_unmodified_since: str | None = None

    @property
    def has_conditions(self) -> bool:
        """True when any precondition field is present (RFC 9110 section 13.1)."""
        return not (
            self.if_match is None
            and self.if_none_match is None
            and self.if_modified_since is None
            and self.if_unmodified_since is None
        )


_FIELD_NAMES: Final = {
    b"range": "range",
    b"if-range": "if_range",
    b"if-match": "if_match",
    b"if-none-match": "if_none_match",
    b"if-modified-since": "if_modified_since",
    b"if-unmodified-since": "if_unmodified_since",
}


def read_request_fields(method: str, headers: Sequence[tuple[bytes, bytes]]) -> RequestFields:
    """Pick the conditional and range fields out of ASGI headers.

    Args:
        method: the request method.
        headers: ASGI headers (lower-case names, as servers give them).

    Returns:
        The fields; repeated list-valued fields are joined with ``", "`` (RFC 9110
        section 5.3), a repeated Range makes the Range invalid (ignored).
    """
    found: dict[str, str] = {}
    for raw_name, raw_value in headers:
        key = _FIELD_NAMES.get(raw_name.lower())
        if key is None:
            continue
        value = raw_value.decode("latin-1")
        if key in found:
            value = "" if key in ("range", "if_range") else f"{found[key]}, {value}"
        found[key] = value
    return RequestFields(method=method, **found)


def error_fields(status: int) -> list[tuple[bytes, bytes]]:
    """The fields of the short plain-text error ``send_error`` sends for ``status``.

    Args:
        status: a status of ``ERROR_BODIES``.

    Returns:
        Content-Type, Content-Length (of ``ERROR_BODIES[status]``) and
        ``X-Content-Type-Options: nosniff``, in that order.
    """
    return [
        (b"content-type", b"text/plain; charset=utf-8"),
        (b"content-length", str(len(ERROR_BODIES[status])).encode()),
        (b"x-content-type-options", b"nosniff"),
    ]


async def send_error(
    send: Send, status: int, *, head: bool = False, headers: Sequence[tuple[bytes, bytes]] = ()
) -> Sent:
    """Send a short plain-text error; the body never names a filesystem path.

    Args:
        send: the ASGI send callable.
        status: 400, 403, 404, 405, 412, 416, 500 or 503.
        head: the request was HEAD: headers only.
        headers: extra headers (Allow, Content-Range, Retry-After...).

    Returns:
        What was sent.
    """
    body = ERROR_BODIES[status]
    all_headers = [*error_fields(status), *headers]
    if status == 503:
        all_headers.append((b"retry-after", str(RETRY_AFTER_S).encode()))
    await send({"type": "http.response.start", "status": status, "headers": all_headers})
    await send({"type": "http.response.body", "body": b"" if head else body})
    return Sent(status, 0 if head else len(body))


async def send_redirect(send: Send, location: bytes, *, head: bool) -> Sent:
    """Send a 301 to ``location`` (a directory's path with ``/`` added), as mod_dir does.

    Args:
        send: the ASGI send callable.
        location: the target, a path (and query) on this host.
        head: headers only.

    Returns:
        What was sent.
    """
    body = b"Moved Permanently\n"
    await send(
        {
            "type": "http.response.start",
            "status": 301,
            "headers": [
                (b"location", location),
                (b"content-type", b"text/plain; charset=utf-8"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": b"" if head else body})
    return Sent(301, 0 if head else len(body))


@dataclass(frozen=True, slots=True)
class Representation:
    """What a file response says about the file, computed once per version of the file.

    Only values are kept; the validators and header fields are made when asked: every
    object a cache entry keeps is scanned by each collection while it lives (the
    garbage collector section of ``docs/performance.md``).

    Attributes:
        size: the representation's length in bytes.
        etag: its strong entity-tag, quotes included (``Validators.etag``).
        last_modified_s: its modification time, seconds (``Validators.last_modified_s``).
        last_modified: the same as an IMF-fixdate (``Validators.last_modified``).
        media_type: its Content-Type.
        cache_control: the Cache-Control value every 200, 206 and 304 carries.
    """

    size: int
    etag: str
    last_modified_s: int
    last_modified: str
    media_type: str
    cache_control: str

    @property
    def validators(self) -> Validators:
        """Its validators, ETag and Last-Modified (RFC 9110 section 8.8)."""
        return Validators(self.etag, self.last_modified_s, self.last_modified)

    @property
    def headers(self) -> tuple[tuple[bytes, bytes], ...]:
        """The fields every 200 and 206 carries, Content-Type first (a multipart 206
        replaces it)."""
        etag, cache_control = self.headers_304
        return (
            (b"content-type", _encoded(self.media_type)),
            etag,
            (b"last-modified", _encoded(self.last_modified)),
            cache_control,
            (b"accept-ranges", b"bytes"),
            (b"x-content-type-options", b"nosniff"),
        )

    @property
    def headers_200(self) -> tuple[tuple[bytes, bytes], ...]:
        """``headers`` plus Content-Length, for a 200."""
        return (*self.headers, (b"content-length", str(self.size).encode()))

    @property
    def headers_304(self) -> tuple[tuple[bytes, bytes], ...]:
        """What a 304 carries: ETag and Cache-Control (RFC 9110 section 15.4.5), in the
        200's order (``_HEADERS_OF_304``)."""
        return (
            (b"etag", self.etag.encode()),
            (b"cache-control", _encoded(self.cache_control)),
        )


_HEADERS_OF_304: Final = frozenset({b"etag", b"cache-control"})
"""What a 304 repeats of the 200 it stands for: RFC 9110 section 15.4.5 requires ETag and
the Cache-Control a 200 would carry (Date comes from the server; vend sends no
Content-Location, Vary or Expires), and asks for no other representation metadata."""


def make_representation(
    size: int, mtime_ns: int, media_type: str, cache_control: str
) -> Representation:
    """Build a file's representation metadata.

    Args:
        size: length in bytes.
        mtime_ns: modification time in nanoseconds since the epoch.
        media_type: the Content-Type.
        cache_control: the configured Cache-Control value.

    Returns:
        The representation (its validators made now, RFC 9110 section 8.8).
    """
    validators = make_validators(size, mtime_ns)
    return Representation(
        size=size,
        etag=validators.etag,
        last_modified_s=validators.last_modified_s,
        last_modified=validators.last_modified,
        media_type=media_type,
        cache_control=cache_control,
    )


@functools.lru_cache(maxsize=1024)
def _encoded(value: str) -> bytes:
    """A field value as bytes, for the values many representations share (media types,
    Cache-Control, Last-Modified of files written in the same second: the last 1,024)."""
    return value.encode()


class BodySource(Protocol):
    """Where a response body's bytes come from."""

    async def write_range(self, send: Send, offset: int, count: int, *, more_body: bool) -> None:
        """Send ``count`` bytes from ``offset`` (bytes) as one or more body messages."""


class MemoryBody:
    """A body held in memory (a small file from the cache).

    Args:
        data: the whole file.
    """

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data

    async def write_range(self, send: Send, offset: int, count: int, *, more_body: bool) -> None:
        """Send the bytes ``offset .. offset+count-1``; no thread, no filesystem."""
        data = (
            self.data
            if (offset, count) == (0, len(self.data))
            else self.data[offset : offset + count]
        )
        await send({"type": "http.response.body", "body": data, "more_body": more_body})


async def send_representation(
    send: Send, request: RequestFields, rep: Representation, body: BodySource
) -> Sent:
    """Answer a GET or HEAD for a file, per RFC 9110.

    Evaluates preconditions (section 13.2.2: 412 or 304), then Range and If-Range
    (section 14: 206, multipart/byteranges for several ranges, or 416), else 200.

    Args:
        send: the ASGI send callable.
        request: the method and conditional/range fields.
        rep: the file's representation metadata.
        body: where the bytes come from (memory, or an open file).

    Returns:
        What was sent.

    Raises:
        ShortFileError: the file shrank while its body was being read (thread fallback);
            the server then ends the connection.
        OSError, TimeoutError: a read failed or timed out after the headers were sent.
    """
    head = request.method == "HEAD"
    if request.has_conditions:
        outcome = evaluate_preconditions(
            request.method,
            rep.validators,
            if_match=request.if_match,
            if_none_match=request.if_none_match,
            if_modified_since=request.if_modified_since,
            if_unmodified_since=request.if_unmodified_since,
        )
        if outcome is Outcome.PRECONDITION_FAILED:
            return await send_error(send, 412, head=head)
        if outcome is Outcome.NOT_MODIFIED:
            await send({"type": "http.response.start", "status": 304, "headers": rep.headers_304})
            await send({"type": "http.response.body", "body": b""})
            return Sent(304, 0)

    ranges = None
    if (
        request.range is not None
        and not head
        and is_range_applicable(request.if_range, rep.validators, time.time())
    ):
        ranges = parse_range(request.range, rep.size)
    if isinstance(ranges, Unsatisfiable):
        return await send_error(
            send, 416, headers=[(b"content-range", f"bytes */{rep.size}".encode())]
        )
    if not ranges:
        await send({"type": "http.response.start", "status": 200, "headers": rep.headers_200})
        if head:
            await send({"type": "http.response.body", "body": b""})
            return Sent(200, 0)
        await body.write_range(send, 0, rep.size, more_body=False)
        return Sent(200, rep.size)
    if len(ranges) == 1:
        only = ranges[0]
        headers = [
            *rep.headers,
            (b"content-range", only.content_range(rep.size).encode()),
            (b"content-length", str(only.length).encode()),
        ]
        await send({"type": "http.response.start", "status": 206, "headers": headers})
        await body.write_range(send, only.first, only.length, more_body=False)
        return Sent(206, only.length)
    return await _send_multipart(send, body, rep, ranges)


async def _send_multipart(
    send: Send, body: BodySource, rep: Representation, ranges: tuple[ByteRange, ...]
) -> Sent:
    """206 with ``multipart/byteranges`` (RFC 9110 section 14.6), CRLF line endings."""
    boundary = secrets.token_hex(16).encode()
    part_heads = [
        b"--%s\r\nContent-Type: %s\r\nContent-Range: %s\r\n\r\n"
        % (boundary, rep.media_type.encode(), r.content_range(rep.size).encode())
        for r in ranges
    ]
    closing = b"--%s--\r\n" % boundary
    total = sum(len(h) + r.length + 2 for h, r in zip(part_heads, ranges, strict=True)) + len(
        closing
    )
    headers = [
        (b"content-type", b"multipart/byteranges; boundary=" + boundary),
        *rep.headers[1:],
        (b"content-length", str(total).encode()),
    ]
    await send({"type": "http.response.start", "status": 206, "headers": headers})
    for index, (part_head, r) in enumerate(zip(part_heads, ranges, strict=True)):
        lead = part_head if index == 0 else b"\r\n" + part_head
        await send({"type": "http.response.body", "body": lead, "more_body": True})
        await body.write_range(send, r.first, r.length, more_body=True)
    await send({"type": "http.response.body", "body": b"\r\n" + closing, "more_body": False})
    return Sent(206, total)

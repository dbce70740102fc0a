"""Responses: the file response (headers, preconditions, ranges, body) and short errors.

The body of a file goes out in one of two ways:

- ``http.response.zerocopysend`` (the ASGI zero-copy send extension), when the server
  offers it and the mount allows sendfile: the server sends straight from the descriptor
  with sendfile(2) (``app.protocol`` does it for ``vend serve``). Memory stays flat
  whatever the file size.
- otherwise reads of ``CHUNK_BYTES`` in the mount's own threads (aiofiles, with the
  mount's executor and timeout), sent as ``http.response.body`` messages.

Either way a file that turns out shorter than the Content-Length already promised ends
the connection: the client never sees a complete-looking short response.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

import aiofiles

from app.conditional import (
    Outcome,
    Validators,
    evaluate_preconditions,
    is_range_applicable,
    make_validators,
)
from app.mounts import OpenFile
from app.ranges import ByteRange, Unsatisfiable, parse_range
from app.types import Send

CHUNK_BYTES: Final = 256 * 1024
"""Read size of the thread fallback, in bytes."""

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


class ShortFileError(OSError):
    """The file ended before the promised number of bytes: it shrank while being sent."""


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
    all_headers = [
        (b"content-type", b"text/plain; charset=utf-8"),
        (b"content-length", str(len(body)).encode()),
        (b"x-content-type-options", b"nosniff"),
        *headers,
    ]
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


def representation_headers(
    validators: Validators, media_type: str, cache_control: str
) -> list[tuple[bytes, bytes]]:
    """Headers every 200, 206 and 304 of a file carries (RFC 9110 sections 8 and 15.4.5).

    Args:
        validators: the file's ETag and Last-Modified.
        media_type: its Content-Type.
        cache_control: the configured Cache-Control value.

    Returns:
        ASGI header pairs; Content-Type is first (a 304 drops it).
    """
    return [
        (b"content-type", media_type.encode()),
        (b"etag", validators.etag.encode()),
        (b"last-modified", validators.last_modified.encode()),
        (b"cache-control", cache_control.encode()),
        (b"accept-ranges", b"bytes"),
        (b"x-content-type-options", b"nosniff"),
    ]


async def send_file(
    send: Send,
    request: RequestFields,
    file: OpenFile,
    *,
    media_type: str,
    cache_control: str,
    zerocopy: bool,
) -> Sent:
    """Answer a GET or HEAD for an open file, per RFC 9110.

    Evaluates preconditions (section 13.2.2: 412 or 304), then Range and If-Range
    (section 14: 206, multipart/byteranges for several ranges, or 416), else 200.

    Args:
        send: the ASGI send callable.
        request: the method and conditional/range fields.
        file: the open file; the caller closes it afterwards.
        media_type: the Content-Type.
        cache_control: the Cache-Control value.
        zerocopy: the server offers ``http.response.zerocopysend`` and the mount allows
            sendfile.

    Returns:
        What was sent.

    Raises:
        ShortFileError: the file shrank while its body was being read (thread fallback);
            the server then ends the connection.
        OSError, TimeoutError: a read failed or timed out after the headers were sent.
    """
    validators = make_validators(file.size, file.mtime_ns)
    outcome = evaluate_preconditions(
        request.method,
        validators,
        if_match=request.if_match,
        if_none_match=request.if_none_match,
        if_modified_since=request.if_modified_since,
        if_unmodified_since=request.if_unmodified_since,
    )
    head = request.method == "HEAD"
    if outcome is Outcome.PRECONDITION_FAILED:
        return await send_error(send, 412, head=head)
    headers = representation_headers(validators, media_type, cache_control)
    if outcome is Outcome.NOT_MODIFIED:
        await send({"type": "http.response.start", "status": 304, "headers": headers[1:]})
        await send({"type": "http.response.body", "body": b""})
        return Sent(304, 0)

    ranges = None
    if request.range is not None and not head and is_range_applicable(request.if_range, validators):
        ranges = parse_range(request.range, file.size)
    if isinstance(ranges, Unsatisfiable):
        return await send_error(
            send, 416, headers=[(b"content-range", f"bytes */{file.size}".encode())]
        )
    body = _BodyWriter(send, file, zerocopy=zerocopy and not head)
    if not ranges:
        headers.append((b"content-length", str(file.size).encode()))
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        if head:
            await send({"type": "http.response.body", "body": b""})
            return Sent(200, 0)
        await body.write_range(0, file.size, more_body=False)
        return Sent(200, file.size)
    if len(ranges) == 1:
        only = ranges[0]
        headers.append((b"content-range", only.content_range(file.size).encode()))
        headers.append((b"content-length", str(only.length).encode()))
        await send({"type": "http.response.start", "status": 206, "headers": headers})
        await body.write_range(only.first, only.length, more_body=False)
        return Sent(206, only.length)
    return await _send_multipart(send, body, headers, ranges, file.size, media_type)


async def _send_multipart(
    send: Send,
    body: _BodyWriter,
    headers: list[tuple[bytes, bytes]],
    ranges: tuple[ByteRange, ...],
    size: int,
    media_type: str,
) -> Sent:
    """206 with ``multipart/byteranges`` (RFC 9110 section 14.6), CRLF line endings."""
    boundary = secrets.token_hex(16).encode()
    part_heads = [
        b"--%s\r\nContent-Type: %s\r\nContent-Range: %s\r\n\r\n"
        % (boundary, media_type.encode(), r.content_range(size).encode())
        for r in ranges
    ]
    closing = b"--%s--\r\n" % boundary
    total = sum(len(h) + r.length + 2 for h, r in zip(part_heads, ranges, strict=True)) + len(
        closing
    )
    headers[0] = (b"content-type", b"multipart/byteranges; boundary=" + boundary)
    headers.append((b"content-length", str(total).encode()))
    await send({"type": "http.response.start", "status": 206, "headers": headers})
    for index, (part_head, r) in enumerate(zip(part_heads, ranges, strict=True)):
        lead = part_head if index == 0 else b"\r\n" + part_head
        await send({"type": "http.response.body", "body": lead, "more_body": True})
        await body.write_range(r.first, r.length, more_body=True)
    await send({"type": "http.response.body", "body": b"\r\n" + closing, "more_body": False})
    return Sent(206, total)


class _BodyWriter:
    """Writes byte ranges of an open file with zero-copy send or threaded reads."""

    def __init__(self, send: Send, file: OpenFile, *, zerocopy: bool) -> None:
        self._send = send
        self._file = file
        self._zerocopy = zerocopy

    async def write_range(self, offset: int, count: int, *, more_body: bool) -> None:
        """Send ``count`` bytes from ``offset`` (bytes), as one or more body messages."""
        if self._zerocopy:
            await self._send(
                {
                    "type": "http.response.zerocopysend",
                    "file": self._file,
                    "offset": offset,
                    "count": count,
                    "more_body": more_body,
                    # vend's server runs the sendfile calls in the mount's own threads.
                    "vend.executor": self._file.mount.executor,
                    "vend.timeout_s": self._file.mount.fs_op_s,
                }
            )
            return
        await self._write_by_reading(offset, count, more_body=more_body)

    async def _write_by_reading(self, offset: int, count: int, *, more_body: bool) -> None:
        mount = self._file.mount
        if count == 0:
            await self._send({"type": "http.response.body", "body": b"", "more_body": more_body})
            return
        async with aiofiles.open(
            self._file.fd, "rb", buffering=0, closefd=False, executor=mount.executor
        ) as handle:
            await asyncio.wait_for(handle.seek(offset), mount.fs_op_s)
            remaining = count
            while remaining > 0:
                data = await asyncio.wait_for(
                    handle.read(min(CHUNK_BYTES, remaining)), mount.fs_op_s
                )
                if not data:
                    raise ShortFileError("file shrank while being sent")
                remaining -= len(data)
                await self._send(
                    {
                        "type": "http.response.body",
                        "body": data,
                        "more_body": more_body or remaining > 0,
                    }
                )

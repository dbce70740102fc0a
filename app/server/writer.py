"""Response heads, and one request's run through the ASGI application.

``serialize_head`` is the one place a response head is written, for the ASGI path and
for the hot path's prebuilt answers alike: the status line with RFC 9110's reason
phrase, the Date field first, then the fields in the order given, then the
``Connection`` field the connection needs.

``AsgiCycle`` runs one request through the application. It writes only while it is the
connection's current answer (the connection starts it when every earlier answer is
out, see ``app.server.answers``), so answers leave in request order whatever path
each takes. It holds the response start until the next message: when that is the
whole body (a small file, an error), head and body leave in one write. It carries out
the ASGI extension ``http.response.zerocopysend`` with sendfile(2) in the mount's
threads (``app.server.sendfile``). A failure once a response has started (client gone,
file shrank, mount error or timeout) aborts the connection: a body shorter than its
Content-Length is never completed.
"""

from __future__ import annotations

import logging
import urllib.parse
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Final

from app.contract import UNSENT_KEY, ZEROCOPY
from app.server.limits import DEFAULT_SEND_S, REASON_PHRASES
from app.server.sendfile import send_file_range
from app.types import Message

if TYPE_CHECKING:
    from app.server.connection import VendProtocol

log = logging.getLogger("vend.protocol")

STATUS_LINES: Final[dict[int, bytes]] = {
    status: f"HTTP/1.1 {status} {phrase}\r\n".encode("ascii")
    for status, phrase in REASON_PHRASES.items()
}
CLOSE: Final = b"connection: close\r\n"
KEEP_ALIVE: Final = b"connection: keep-alive\r\n"
_NO_BODY_STATUSES: Final = frozenset({204, 304})


def status_line(status: int) -> bytes:
    """The status line of ``status`` with its RFC 9110 reason phrase, CRLF included."""
    line = STATUS_LINES.get(status)
    return line if line is not None else b"HTTP/1.1 %d \r\n" % status


def serialize_fields(headers: Iterable[tuple[bytes, bytes]]) -> bytes:
    """Header fields as ``name: value`` lines (RFC 9112 section 5), each ending in CRLF.

    Args:
        headers: (name, value) pairs, names as given (vend's are lower-case).

    Returns:
        The lines joined.
    """
    return b"".join([name + b": " + value + b"\r\n" for name, value in headers])


def serialize_head(status: int, date: bytes, fields: bytes, connection: bytes) -> bytes:
    """A whole response head (RFC 9112 section 4 and 5).

    Args:
        status: the status code.
        date: the Date field's value (RFC 9110 section 6.6.1), an IMF-fixdate.
        fields: the other fields, as ``serialize_fields`` gives them.
        connection: ``CLOSE``, ``KEEP_ALIVE`` or ``b""``.

    Returns:
        The head, blank line included.
    """
    return b"".join((status_line(status), b"date: ", date, b"\r\n", fields, connection, b"\r\n"))


def make_scope(
    method: bytes,
    url: bytes,
    headers: list[tuple[bytes, bytes]],
    *,
    http10: bool,
    server: tuple[str, int | None] | None,
    client: tuple[str, int] | None,
    scheme: str,
    root_path: str,
    state: dict[str, Any],
) -> dict[str, Any]:
    """The ASGI HTTP scope of a request (ASGI HTTP spec 2.3).

    Args:
        method: the method.
        url: the request-target, origin-form.
        headers: the fields, lower-case names.
        http10: the request is HTTP/1.0.
        server: the local address.
        client: the peer's address.
        scheme: ``http`` or ``https``.
        root_path: uvicorn's ``root_path``.
        state: the lifespan state (a copy).

    Returns:
        The scope; on plain HTTP it offers the zero-copy send extension.
    """
    raw_path, _, query = url.partition(b"?")
    raw_path = raw_path.partition(b"#")[0]
    query = query.partition(b"#")[0]
    path = raw_path.decode("ascii")
    if "%" in path:
        path = urllib.parse.unquote(path)
    scope: dict[str, Any] = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.0" if http10 else "1.1",
        "server": server,
        "client": client,
        "scheme": scheme,
        "root_path": root_path,
        "method": method.decode("ascii"),
        "path": root_path + path,
        "raw_path": root_path.encode("ascii") + raw_path,
        "query_string": query,
        "headers": headers,
        "state": state,
    }
    if scheme == "http":
        scope["extensions"] = {ZEROCOPY: {}}
    return scope


class AsgiCycle:
    """One request through the ASGI application, writing through its connection.

    Args:
        conn: the connection.
        scope: the request's ASGI HTTP scope.
        keep_alive: the request allows the connection to stay open after the answer.
        http10_keep_alive: an HTTP/1.0 request that asked for keep-alive (the answer
            says ``Connection: keep-alive``).

    Attributes:
        keep_alive: whether the connection stays open after this answer.
        status: the status sent (0 before the response starts).
        body_bytes: body bytes written.
    """

    __slots__ = (
        "_conn",
        "_held",
        "_http10",
        "_left",
        "_request_read",
        "_started",
        "body_bytes",
        "complete",
        "head",
        "keep_alive",
        "scope",
        "status",
    )

    def __init__(
        self, conn: VendProtocol, scope: dict[str, Any], keep_alive: bool, http10_keep_alive: bool
    ) -> None:
        self._conn = conn
        self.scope = scope
        self.keep_alive = keep_alive
        self._http10 = http10_keep_alive
        self.head = scope["method"] == "HEAD"
        self._held: Message | None = None
        self._started = False
        self._request_read = False
        self._left: int | None = None  # Content-Length still to send; None: until close
        self.complete = False
        self.status = 0
        self.body_bytes = 0

    async def run(self, app: Any) -> None:
        """Run the application for this request, then tell the connection.

        Args:
            app: the ASGI application (``config.loaded_app``).
        """
        conn = self._conn
        try:
            await app(self.scope, self.receive, self.send)
            if self._held is not None:  # a start never followed by a body
                await self._write_start(self._held, b"", more_body=False)
            if not self.complete and not conn.disconnected:
                if self._started:
                    log.error("application returned before its response body ended")
                    conn.abort("response body not completed")
                else:
                    log.error("application returned without a response")
                    self._send_500()
        except Exception:
            if not conn.disconnected:
                log.exception("unexpected error while answering a request")
                if self._started:
                    conn.abort("application error after the response started")
                else:
                    self._send_500()
        finally:
            conn.cycle_done(self)

    def _send_500(self) -> None:
        body = b"Internal Server Error\n"
        self.keep_alive = False
        fields = serialize_fields(
            [
                (b"content-type", b"text/plain; charset=utf-8"),
                (b"content-length", b"%d" % len(body)),
                (b"x-content-type-options", b"nosniff"),
            ]
        )
        head = serialize_head(500, self._conn.date(), fields, CLOSE)
        self._conn.write(head if self.head else head + body)
        self.status, self.body_bytes, self.complete = 500, 0 if self.head else len(body), True

    async def receive(self) -> Message:
        """The request body (always empty: vend reads and discards bodies), then a wait
        for the client to go away."""
        if not self._request_read:
            self._request_read = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await self._conn.wait_disconnected()
        return {"type": "http.disconnect"}

    async def send(self, message: Message) -> None:
        """Send one ASGI message (``http.response.start``, ``.body``, ``.zerocopysend``).

        Raises:
            RuntimeError: a message out of order, or a body longer than its
                Content-Length (ASGI's rules, as uvicorn enforces them).
        """
        kind = message["type"]
        if self._conn.disconnected:
            return
        if kind == "http.response.start":
            if self._started:
                raise RuntimeError("response already started")
            # A later start replaces one never sent (an error page after an app error).
            self._held = message
            return
        held, self._held = self._held, None
        if kind == "http.response.body":
            body: bytes = message.get("body", b"")
            more = bool(message.get("more_body", False))
            if held is not None:
                await self._write_start(held, body, more_body=more)
            else:
                await self._write_body(body, more_body=more)
            return
        if kind == ZEROCOPY:
            if held is not None:
                await self._write_start(held, b"", more_body=True)
            await self._zerocopy(message)
            return
        raise RuntimeError(f"unexpected ASGI message {kind!r}")

    async def _write_start(self, start: Message, body: bytes, *, more_body: bool) -> None:
        """Write the head, with the first body bytes in the same write."""
        if self.complete:
            raise RuntimeError("response already complete")
        self._started = True
        status = int(start["status"])
        headers: list[tuple[bytes, bytes]] = list(start.get("headers", ()))
        length: int | None = None
        for name, value in headers:
            lname = name.lower()
            if lname == b"content-length":
                length = int(value)
            elif lname == b"connection" and b"close" in value.lower():
                self.keep_alive = False
        if status in _NO_BODY_STATUSES:
            length = 0
        if length is None:
            self.keep_alive = False  # the body ends when the connection does
        connection = b""
        if not self.keep_alive:
            if not any(name.lower() == b"connection" for name, _ in headers):
                connection = CLOSE
        elif self._http10:
            connection = KEEP_ALIVE
        self.status = status
        self._left = None if self.head or status in _NO_BODY_STATUSES else length
        head = serialize_head(status, self._conn.date(), serialize_fields(headers), connection)
        if self.head or status in _NO_BODY_STATUSES:
            body = b""
        else:
            self._count(len(body))
        self._conn.write(head + body if body else head)
        if not more_body:
            self._finish()
        else:
            await self._conn.drain()

    async def _write_body(self, body: bytes, *, more_body: bool) -> None:
        if not self._started or self.complete:
            raise RuntimeError("response body outside a response")
        if body and not self.head and self.status not in _NO_BODY_STATUSES:
            self._count(len(body))
            self._conn.write(body)
        if not more_body:
            self._finish()
        else:
            await self._conn.drain()

    def _count(self, n: int) -> None:
        if self._left is not None:
            if n > self._left:
                raise RuntimeError("Response content longer than Content-Length")
            self._left -= n
        self.body_bytes += n

    def _finish(self) -> None:
        if self._left:
            raise RuntimeError("Response content shorter than Content-Length")
        self.complete = True

    async def _zerocopy(self, message: Message) -> None:
        """Carry out a zero-copy send: sendfile(2) of a file's bytes, in threads."""
        if not self._started or self.complete:
            raise RuntimeError("zero-copy send outside a response body")
        count = int(message["count"])
        more_body = bool(message.get("more_body", False))
        if self.head:
            count = 0
        elif self._left is not None and count > self._left:
            raise RuntimeError("Response content longer than Content-Length")
        if count:
            conn = self._conn
            await conn.drain()
            sent = await send_file_range(
                conn.transport,
                message["file"].fileno(),
                int(message.get("offset", 0)),
                count,
                message.get("vend.executor"),
                float(message.get("vend.timeout_s", DEFAULT_SEND_S)),
                conn.limits.send_s,
            )
            if sent < count:
                # What the access log and metrics should not count as sent.
                self.scope[UNSENT_KEY] = self.scope.get(UNSENT_KEY, 0) + count - sent
                self.body_bytes += sent
                conn.abort("body not completed")
                return
            self._count(count)
        if not more_body:
            self._finish()

"""Reading requests: httptools' callbacks, RFC 9112 framing and the head limits.

``RequestReader`` is the httptools parser's callback object for one connection. It
feeds the parser head by head, counting a head's bytes before the parser sees them
(httptools joins a field's pieces by copying, so nothing past ``MAX_HEAD_BYTES`` is
ever parsed), feeds bodies per their framing and discards them, and checks what
llhttp leaves to the server: Host (RFC 9112 section 3.2: one, valid, required in
HTTP/1.1), the request-target's form (origin-form; absolute-form, whose authority
takes the place of Host, section 3.2.2; asterisk- and authority-form refused), the
version, and the limits of ``app.server.limits``. llhttp itself refuses obs-fold,
Content-Length with Transfer-Encoding, repeated or invalid Content-Length and bare LF
line ends. A complete request goes to the connection (``VendProtocol.dispatch``); a
refusal too (``VendProtocol.refuse``), which answers it after every earlier answer.
"""

from __future__ import annotations

import logging
import re
import sys
import time
from typing import TYPE_CHECKING, Final

import httptools

from app.server.limits import (
    BODY_SLICE_BYTES,
    MAX_DISCARDED_BODY_BYTES,
    MAX_FIELD_BYTES,
    MAX_FIELDS,
    MAX_HEAD_BYTES,
    MAX_REQUEST_TARGET_BYTES,
    REASON_PHRASES,
    Event,
    ReadState,
    next_state,
)
from app.server.writer import CLOSE, serialize_fields, serialize_head

if TYPE_CHECKING:
    from app.asgi import VendApp
    from app.server.connection import VendProtocol

log = logging.getLogger("vend.protocol")

_HOST_RE: Final = re.compile(
    rb"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9\-._~!$&'()*+,;=%]*)(?::[0-9]*)?", re.ASCII
)
"""RFC 9110 section 7.2: ``uri-host [ ":" port ]`` (IP-literal, IPv4 or reg-name)."""
COLD_FIELDS: Final = frozenset(
    (b"range", b"if-range", b"if-match", b"if-modified-since", b"if-unmodified-since")
)
"""Fields that send a request to the ASGI application rather than the hot path."""
_NOTED: Final = COLD_FIELDS | {
    b"host",
    b"if-none-match",
    b"content-length",
    b"transfer-encoding",
    b"expect",
}
_CONTINUE: Final = b"HTTP/1.1 100 Continue\r\n\r\n"
_IDLE, _HEAD, _BODY = ReadState.IDLE, ReadState.HEAD, ReadState.BODY
READING: Final = frozenset((_IDLE, _HEAD, _BODY))
"""The states in which requests are read."""


class Refusal(Exception):
    """Raised in a parser callback to stop parsing and refuse the request.

    Args:
        status: the status code to answer.
        reason: for the log.
        headers: extra response fields (Allow for 405).
    """

    def __init__(self, status: int, reason: str, *headers: tuple[bytes, bytes]) -> None:
        super().__init__(reason)
        self.status = status
        self.headers = headers


def refusal_response(
    status: int, date: bytes, head: bool, headers: tuple[tuple[bytes, bytes], ...] = ()
) -> tuple[bytes, int]:
    """A refusal: a short plain-text answer with ``Connection: close``.

    Args:
        status: the status code.
        date: the Date value.
        head: the request was HEAD (no body).
        headers: extra fields.

    Returns:
        The bytes and the body's length in bytes.
    """
    phrase = REASON_PHRASES[status]
    body = f"{phrase}\n".encode("ascii")
    fields = serialize_fields(
        [
            (b"content-type", b"text/plain; charset=utf-8"),
            (b"content-length", b"%d" % len(body)),
            (b"x-content-type-options", b"nosniff"),
            *headers,
        ]
    )
    if head:
        body = b""
    return serialize_head(status, date, fields, CLOSE) + body, len(body)


def record_refusal(
    vend: VendApp | None,
    client: tuple[str, int] | None,
    status: int,
    body_bytes: int,
    line: bytes | None,
    fields: list[tuple[bytes, bytes]],
) -> None:
    """Count a refusal in ``vend_requests_total`` and write its access log line.

    Args:
        vend: the application (None: not vend's, nothing to record).
        client: the client address (after trusted X-Forwarded-For).
        status: the status sent.
        body_bytes: body bytes sent.
        line: the request line, or None when none came whole (logged ``-``).
        fields: the request's fields read so far.
    """
    if vend is None:
        return
    vend.metrics.count_response(status, body_bytes)
    headers = dict(fields)
    vend.access_log.record_line(
        str(client[0]) if client else None,
        line,
        status,
        body_bytes,
        headers.get(b"referer"),
        headers.get(b"user-agent"),
        None,
        time.perf_counter(),
    )


class RequestReader:
    """The parser and the request being read, for one connection.

    Args:
        conn: the connection requests go to.

    Attributes:
        parser: httptools' parser, calling this object back.
        held: bytes not fed yet (the pipeline is full), at most one read.
        tail: the last bytes of an unfinished head (a CRLF CRLF may straddle reads).
        head_bytes: bytes of the unfinished head so far.
        body_left: body bytes still to come (None: chunked).
        feeding: the parser is running (no re-entry).
        fast_data: the read being parsed when it is one whole head (see
            ``HotPath.remember``), else None.
        url, headers, method: the request being read.
        line_done: its request line is complete (a refusal logs it).
    """

    def __init__(self, conn: VendProtocol) -> None:
        self.conn = conn
        self.parser = httptools.HttpRequestParser(self)
        self.parser.set_dangerous_leniencies(lenient_data_after_close=True)
        self.held = b""
        self.tail = b""
        self.head_bytes = 0
        self.body_left: int | None = 0
        self.feeding = False
        self.fast_data: bytes | None = None
        self._valid_host = b"\x00"
        self.reset_request()

    def reset_request(self) -> None:
        """Forget the request being read."""
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.line_done = False
        self.method = b""
        self._discarded = 0
        self._inm: bytes | None = None
        self._host: bytes | None = None
        self._to_app = False
        self._trailers: int | None = None  # trailer fields so far, once the head is done
        self._continue = False  # Expect: 100-continue

    def feed_head(self, data: bytes) -> None:
        """Feed a read that is exactly one whole head (the common case), from IDLE."""
        conn = self.conn
        conn.state = next_state(conn.state, Event.HEAD_BYTES)
        self.feeding = True
        self.fast_data = data
        try:
            self.parser.feed_data(data)
        except Exception:
            self.feeding = False
            self.parser_failed()
        else:
            self.feeding = False
        self.fast_data = None

    def request_line(self) -> bytes | None:
        """The request line as received, once complete, for the access log."""
        if not self.line_done:
            return None
        version = self.parser.get_http_version().encode("ascii")
        return self.parser.get_method() + b" " + self.url + b" HTTP/" + version

    def feed(self, data: bytes) -> None:
        """Feed ``data`` head by head, counting head bytes before the parser sees them."""
        parser = self.parser
        self.feeding = True
        try:
            while data and self.conn.state in READING:
                if self.conn.queue_full():
                    self.held = data
                    return
                if self.conn.state is not _BODY:
                    if self.conn.state is _IDLE:
                        self.conn.state = next_state(_IDLE, Event.HEAD_BYTES)
                        self.conn.set_deadline("request")
                    buf = self.tail + data if self.tail else data
                    end = buf.find(b"\r\n\r\n")
                    if end < 0:
                        self.head_bytes += len(data)
                        if self.head_bytes > MAX_HEAD_BYTES:
                            raise Refusal(431, f"request head over {MAX_HEAD_BYTES} bytes")
                        self.tail = buf[-3:]
                        piece, data = data, b""
                    else:
                        cut = end + 4 - (len(buf) - len(data))
                        self.head_bytes += cut
                        if self.head_bytes > MAX_HEAD_BYTES:
                            raise Refusal(431, f"request head over {MAX_HEAD_BYTES} bytes")
                        self.tail = b""
                        piece, data = (data, b"") if cut == len(data) else (data[:cut], data[cut:])
                        parser.feed_data(piece)  # a body follows: on_headers_complete
                        continue
                else:
                    n = self.body_left if self.body_left is not None else BODY_SLICE_BYTES
                    if n <= 0:  # never: llhttp completes a message when its body ends
                        raise Refusal(400, "body framing lost")
                    piece, data = data[:n], data[n:]
                parser.feed_data(piece)
        except Exception:
            self.parser_failed()
        finally:
            self.feeding = False

    def parser_failed(self) -> None:
        """Refuse after a limit, a parser error or a failed callback (in ``except``)."""
        exc = sys.exc_info()[1]
        if isinstance(exc, Refusal):
            self.conn.refuse(exc.status, str(exc), exc.headers)
        elif isinstance(exc, httptools.HttpParserUpgrade):
            pass  # the request that asked for it was its connection's last
        elif isinstance(exc, httptools.HttpParserInvalidMethodError) and not isinstance(
            exc.__context__, Refusal
        ):
            # RFC 9110 section 9.1: a method the server does not know is 501 (one it knows
            # but does not allow stays 405 with Allow, ``_check_head``).
            self.conn.refuse(501, f"unknown method: {exc}")
        elif isinstance(exc, httptools.HttpParserError):
            cause = exc.__context__
            if isinstance(cause, Refusal):
                self.conn.refuse(cause.status, str(cause), cause.headers)
            else:
                if cause is not None:
                    log.error("parser callback failed", exc_info=cause)
                self.conn.refuse(400, f"invalid request: {exc}")
        else:
            raise  # a bug in vend: uvicorn logs it

    def on_message_begin(self) -> None:
        """httptools: a request starts.

        Only a request pipelined right behind a chunked body can start while vend thinks
        the connection idle: the slice of that body fed to the parser
        (``BODY_SLICE_BYTES``) held its end and the start of the next request, which the
        parser goes on to read. It is then a request being read like any other.
        """
        state = self.conn.state
        if state is _IDLE:
            self.conn.state = next_state(_IDLE, Event.HEAD_BYTES)
            self.conn.set_deadline("request")
        elif state not in READING:  # behind the last request (HTTP/1.0 with a chunked body)
            raise Refusal(400, "a request after the connection's last")  # not answered

    def on_headers_complete(self) -> None:
        """httptools: the head is complete; a body follows when it has one.

        With ``Expect: 100-continue`` in HTTP/1.1 and nothing answered ahead of it,
        ``100 Continue`` goes out at once (RFC 9110 section 10.1.1), so that the client
        sends the body vend reads and discards, and then gets its final answer.
        """
        self._trailers = 0
        if self.body_left is None or self.body_left > 0:
            self.conn.state = next_state(self.conn.state, Event.HEAD_COMPLETE)
            conn = self.conn
            if (
                self._continue
                and self.parser.get_http_version() == "1.1"
                and conn._active is None
                and not conn._queue
            ):
                # RFC 9110 section 10.1.1: the client waits for 100 or a final answer;
                # vend reads (and discards) the body, so it asks for it at once.
                conn.write(_CONTINUE)

    def on_url(self, url: bytes) -> None:
        """httptools: a piece of the request-target."""
        self.url += url
        if len(self.url) > MAX_REQUEST_TARGET_BYTES:
            raise Refusal(414, f"request-target over {MAX_REQUEST_TARGET_BYTES} bytes")

    def on_header(self, name: bytes, value: bytes) -> None:
        """httptools: one header field, whole; framing fields are checked at once.

        A field after the head is a trailer field of a chunked body (RFC 9112 section
        7.1.2): bounded as header fields are, then discarded, never merged into them
        (RFC 9110 section 6.5.1), so that a trailer cannot act as Range, If-Match,
        X-Forwarded-For or Host.
        """
        self.line_done = True
        if self._trailers is not None:
            self._trailers += 1
            if self._trailers > MAX_FIELDS:
                raise Refusal(431, f"more than {MAX_FIELDS} trailer fields")
            if len(name) + len(value) > MAX_FIELD_BYTES:
                raise Refusal(431, f"a trailer field over {MAX_FIELD_BYTES} bytes")
            return
        headers = self.headers
        if len(headers) >= MAX_FIELDS:
            raise Refusal(431, f"more than {MAX_FIELDS} header fields")
        if len(name) + len(value) > MAX_FIELD_BYTES:
            raise Refusal(431, f"a header field over {MAX_FIELD_BYTES} bytes")
        name = name.lower()
        headers.append((name, value))
        if name in _NOTED:
            self._note(name, value)

    def _note(self, name: bytes, value: bytes) -> None:
        """Note a field that decides framing, Host or the path taken."""
        if name == b"host":
            if self._host is not None:
                raise Refusal(400, "more than one Host field")
            self._host = value
        elif name == b"expect":
            self._continue = value.strip(b" \t").lower() == b"100-continue"
        elif name == b"if-none-match":
            inm = self._inm
            self._inm = value if inm is None else inm + b", " + value
        else:
            self._to_app = True
            if name == b"content-length":  # llhttp checked it: digits, not repeated
                if int(value) > MAX_DISCARDED_BODY_BYTES:
                    raise Refusal(413, f"request body over {MAX_DISCARDED_BODY_BYTES} bytes")
                self.body_left = int(value)
            elif name == b"transfer-encoding":
                # RFC 9112 section 6.1: a transfer coding vend does not implement (any
                # but chunked) gets 501.
                for coding in value.lower().split(b","):
                    if coding.strip(b" \t") not in (b"chunked", b""):
                        raise Refusal(501, "transfer coding other than chunked")
                self.body_left = None  # llhttp allows chunked only, last

    def _check_head(self) -> None:
        """The head is complete: check version, method, Host and target form."""
        self.line_done = True
        parser = self.parser
        self.method = method = parser.get_method()
        version = parser.get_http_version()
        if version != "1.1" and version != "1.0":
            raise Refusal(505, f"HTTP/{version}")
        if method == b"CONNECT":
            raise Refusal(405, "CONNECT", (b"allow", b"GET, HEAD"))
        host = self._host
        if host is None:
            if version == "1.1":
                raise Refusal(400, "no Host field in an HTTP/1.1 request")
        elif host is not self._valid_host and host != self._valid_host:
            if not _HOST_RE.fullmatch(host):
                raise Refusal(400, "invalid Host field")
            self._valid_host = host  # clients send the same Host on every request
        if self.url[:1] != b"/":
            self._absolute_form(self.url)
            self._to_app = True

    def _absolute_form(self, url: bytes) -> None:
        """RFC 9112 section 3.2.2: the target's authority takes the place of Host."""
        if url == b"*":
            raise Refusal(400, "asterisk-form request-target")
        try:
            parsed = httptools.parse_url(url)
        except httptools.HttpParserInvalidURLError:
            raise Refusal(400, "invalid request-target") from None
        if parsed.schema not in (b"http", b"https") or not parsed.host:
            raise Refusal(400, "request-target is not origin-form nor absolute-form")
        host = b"[" + parsed.host + b"]" if b":" in parsed.host else parsed.host
        authority = host if parsed.port is None else b"%s:%d" % (host, parsed.port)
        origin = parsed.path or b"/"
        if parsed.query is not None:
            origin += b"?" + parsed.query
        self.url = origin
        self.headers = [(n, v) for n, v in self.headers if n != b"host"]
        self.headers.append((b"host", authority))

    def on_body(self, body: bytes) -> None:
        """httptools: body bytes, counted and discarded."""
        if self.body_left is not None:
            self.body_left -= len(body)
        self._discarded += len(body)
        if self._discarded > MAX_DISCARDED_BODY_BYTES:
            raise Refusal(413, f"request body over {MAX_DISCARDED_BODY_BYTES} bytes")

    def on_message_complete(self) -> None:
        """httptools: the request is complete: answer it (hot path) or queue it."""
        self._check_head()
        parser = self.parser
        http10 = parser.get_http_version() == "1.0"
        # RFC 9112 section 6.1: HTTP/1.0 with Transfer-Encoding has faulty framing: close.
        keep_alive = (
            parser.should_keep_alive()
            and not parser.should_upgrade()
            and not (http10 and self.body_left is None)
        )
        self.conn.state = next_state(
            self.conn.state, Event.MESSAGE_COMPLETE if keep_alive else Event.LAST_MESSAGE
        )
        self.head_bytes = 0
        self.body_left = 0
        method, url, headers = self.method, self.url, self.headers
        inm, to_app = self._inm, self._to_app
        self.reset_request()
        self.conn.dispatch(method, url, headers, http10, keep_alive, inm, to_app, self.fast_data)

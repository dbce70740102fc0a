"""Request limits for vend's HTTP protocol: head size, pipelining depth, head timeout.

vend must be safe when reached directly, not only behind Apache. uvicorn's httptools
protocol has none of these limits: httptools joins a header's pieces by copying until the
whole line has arrived (a 150 MiB header line grows the process by hundreds of MiB);
every request parsed from one read is queued (a pipeline flood queues thousands); and
its keep-alive timer runs only between complete requests (a partial head, or a
connection that sends nothing, is held forever). ``RequestLimits`` adds, in the
protocol, what Apache (``LimitRequest*``, mod_reqtimeout) and nginx do:

- Bytes are fed to the parser in small slices (a read of whole requests at once), and
  those of an unfinished head are counted as they arrive; once a limit is passed
  nothing more is fed. A request-target over
  ``MAX_REQUEST_TARGET_BYTES`` gets 414; a head over ``MAX_HEAD_BYTES``, a field over
  ``MAX_FIELD_BYTES`` or more than ``MAX_FIELDS`` fields gets 431.
- At most ``MAX_PIPELINED_REQUESTS`` requests wait behind the one being answered; the
  bytes after them are held unparsed (at most one read) and reading stops until a
  response completes, as nginx and Apache, which never read ahead, behave.
- A request head must be complete within ``request_head_s`` seconds of its first byte,
  and a new connection must send its first request head within that time. The time
  runs only while vend reads the connection: when it stops reading because requests
  wait, the client is not to blame, and the time starts again when reading resumes.
  Otherwise the connection is closed, with 408 if part of a head had arrived.

A refusal is sent after the responses to the requests before it, in order, with
``Connection: close``; vend then closes its side for writing and reads and discards for
up to ``LINGER_S`` seconds (a lingering close, as Apache does) so that the client reads
the refusal instead of a reset.

It relies on these uvicorn internals, checked by ``tests/unit/test_uvicorn_contract.py``:
``data_received`` feeds ``self.parser``; ``connection_made`` creates ``self.flow``, a
``FlowControl`` that every ``RequestResponseCycle`` shares; ``on_headers_complete``
queues a request on ``self.pipeline`` (and pauses reading) while ``self.cycle``, the
last request parsed, is unanswered; ``on_response_complete`` resumes reading and starts
the next queued request; ``self.url`` and ``self.headers`` collect the request-target and
fields (``on_url``, ``on_header``); ``server_state.default_headers`` holds the Date
header. It also relies on llhttp requiring CRLF line ends (uvicorn enables no line-end
leniency), so that every request head ends with CRLF CRLF.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

from uvicorn.protocols.http.flow_control import FlowControl
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

MAX_REQUEST_TARGET_BYTES: Final = 8190
"""Longest request-target, in bytes: Apache's LimitRequestLine default (which counts the
whole request line; nginx's large header buffers are 8 KiB). Longer: 414 (RFC 9110
section 15.5.15)."""
MAX_FIELD_BYTES: Final = 8190
"""Longest header field, name and value together, in bytes: Apache's
LimitRequestFieldSize default. Longer: 431 (RFC 6585 section 5)."""
MAX_FIELDS: Final = 100
"""Most header fields in one request head: Apache's LimitRequestFields default. More: 431."""
MAX_HEAD_BYTES: Final = 64 * 1024
"""Largest request head (request line, fields, blank line), in bytes. Real heads, even
with Apache's X-Forwarded-* added, stay under 8 KiB; nginx accepts at most 4 x 8 KiB of
header lines by default. More: 431. Counted per slice fed, so a head may pass it by up to
one slice (``SLICE_BYTES``) before it is refused."""
MAX_PIPELINED_REQUESTS: Final = 16
"""Most requests parsed and waiting behind the one being answered, per connection.
Browsers do not pipeline; a client that does gets every answer in order, the later
requests being read as the earlier ones are answered."""
MIN_REQUEST_BYTES: Final = 16
"""Fewest bytes a request can take (``GET / HTTP/1.1\\n\\n``, even with bare LF line
ends): a slice of N x 16 bytes can complete at most N request heads."""
SLICE_BYTES: Final = MAX_PIPELINED_REQUESTS * MIN_REQUEST_BYTES
"""Largest slice fed to the parser at once, in bytes, except for ``FAST_PATH_BYTES``."""
FAST_PATH_BYTES: Final = 8 * 1024
"""Largest read fed whole, in bytes, when it starts at a request boundary and holds no
more head ends (CRLF CRLF) than the pipeline has room for: most reads are one whole
request, and one parser call per read is what uvicorn itself costs."""
DEFAULT_REQUEST_HEAD_S: Final = 20.0
"""Default time for a whole request head, in seconds: Apache mod_reqtimeout's default
``header=20-40``, first value."""
LINGER_S: Final = 2.0
"""How long a refused connection is read and discarded before it is closed, in seconds:
Apache's lingering close waits for 2 s of quiet (SECONDS_TO_LINGER); vend waits 2 s in
all, so a client that keeps sending cannot hold the connection."""

REASON_PHRASES: Final[dict[int, str]] = {
    408: "Request Timeout",  # RFC 9110 section 15.5.9
    414: "URI Too Long",  # RFC 9110 section 15.5.15 (Python still says "Request-URI")
    431: "Request Header Fields Too Large",  # RFC 6585 section 5
}

log = logging.getLogger("vend.limits")

if TYPE_CHECKING:
    _Protocol = HttpToolsProtocol
else:
    _Protocol = object


class ReadGate(FlowControl):
    """uvicorn's flow control that stays paused while the protocol holds unparsed bytes.

    uvicorn resumes reading whenever a response completes or the application awaits
    the body; while ``holding`` is set those calls do nothing, so at most one read is
    ever held.

    Args:
        transport: the connection's transport.
        on_change: called after reading is paused or resumed (not when already so).
    """

    def __init__(self, transport: asyncio.Transport, on_change: Callable[[], None]) -> None:
        super().__init__(transport)
        self.holding = False
        self._on_change = on_change

    def pause_reading(self) -> None:
        """Stop reading the socket."""
        if not self.read_paused:
            super().pause_reading()
            self._on_change()

    def resume_reading(self) -> None:
        """Read the socket again, unless bytes are held."""
        if self.read_paused and not self.holding:
            super().resume_reading()
            self._on_change()


class RequestLimits(_Protocol):
    """Mixin for uvicorn's ``HttpToolsProtocol``: bounded heads, pipelining and head time.

    Put it before ``HttpToolsProtocol`` among the bases. Every limit is a constant of
    this module except ``request_head_s``, set on the class at start.

    Attributes:
        request_head_s: time allowed for a request head from its first byte, and for a
            new connection's first head from the connection, in seconds.
    """

    request_head_s: float = DEFAULT_REQUEST_HEAD_S

    flow: ReadGate
    _head_open: bool
    _head_begun: bool
    _first_head: bool
    _head_bytes: int
    _piece_bytes: int
    _held: bytes
    _stopped: bool
    _refusal: int | None
    _head_timer: asyncio.TimerHandle | None
    _linger_timer: asyncio.TimerHandle | None
    _running: RequestResponseCycle | None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        """Start the connection, its read gate, and the first head's timer."""
        super().connection_made(transport)
        self.flow = ReadGate(transport, self._update_head_timer)
        self._head_open = True  # bytes arriving now belong to a request head
        self._head_begun = False  # some byte of the open head has arrived
        self._first_head = True
        self._head_bytes = self._piece_bytes = 0
        self.url = b""  # uvicorn sets it at the first message; checked before that
        self._held = b""
        self._stopped = False
        self._refusal = None
        self._head_timer = self._linger_timer = None
        self._running = None
        self._update_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        """Cancel this connection's timers, drop held bytes, and tell every request.

        uvicorn marks only the last request parsed as disconnected; with requests
        pipelined, the one running (or just started) would then write to a closed
        transport, which uvloop answers with RuntimeError ("Exception in ASGI
        application" in the log, at will for any client that pipelines and resets).
        """
        self._stopped = True
        self._held = b""
        for timer in (self._head_timer, self._linger_timer):
            if timer is not None:
                timer.cancel()
        self._head_timer = self._linger_timer = None
        cycles = [cycle for cycle, _ in self.pipeline]
        if self._running is not None:
            cycles.append(self._running)
        for cycle in cycles:
            if not cycle.response_complete:
                cycle.disconnected = True
            cycle.message_event.set()  # wakes a receive() waiting for the body
        super().connection_lost(exc)

    def _start_asgi_task(self, cycle: RequestResponseCycle, app: Any) -> None:
        self._running = cycle  # the request being answered (see connection_lost)
        super()._start_asgi_task(cycle, app)

    def data_received(self, data: bytes) -> None:
        """Feed received bytes to the parser within the limits (see the module docstring)."""
        if self._stopped:
            return  # refused or closing: read and discarded
        if self._held:  # reading was paused; a read already under way may still land
            self._held += data
            self.flow.pause_reading()
            return
        self._feed(data)

    def _feed(self, data: bytes) -> None:
        """Feed ``data`` in slices; hold the rest when the pipeline is full."""
        room = MAX_PIPELINED_REQUESTS - len(self.pipeline)
        if (
            self._head_open
            and not self._head_begun
            and len(data) <= FAST_PATH_BYTES
            and data.count(b"\r\n\r\n") <= room
        ):
            # The usual read: whole requests from a request boundary. Every head ends in
            # this read with CRLF CRLF, so at most ``room`` heads can complete in it.
            end = data.rfind(b"\r\n\r\n")
            if self._feed_piece(data, len(data) if end < 0 else len(data) - end - 4):
                self._update_head_timer()
            return
        pos = 0
        while pos < len(data):
            room = MAX_PIPELINED_REQUESTS - len(self.pipeline)
            if room <= 0:
                self._hold(data[pos:])
                return
            piece = data[pos : pos + room * MIN_REQUEST_BYTES]
            pos += len(piece)
            # An open head that began in the piece is charged all of it: an overestimate
            # by less than one piece.
            if not self._feed_piece(piece, len(piece)):
                return
        self._update_head_timer()

    def _feed_piece(self, piece: bytes, head_bytes: int) -> bool:
        """Feed one piece; charge ``head_bytes`` of it to a head still open after it.

        Returns:
            False when feeding must stop: the connection is closing, or was refused.
        """
        if self._head_open:
            self._head_begun = True
        self._piece_bytes = len(piece)
        super().data_received(piece)
        if self.transport.is_closing():
            return False  # uvicorn answered a malformed request with 400
        if not self._stopped and self._head_begun:
            # A head still open: stop it as soon as it passes a limit.
            self._head_bytes += head_bytes
            self._check_head()
        if self._stopped:
            self._finish_if_answered()
            return False
        return True

    def _hold(self, rest: bytes) -> None:
        """Keep ``rest`` unparsed and stop reading until a queued request is started."""
        self._held = rest
        self.flow.holding = True
        self.flow.pause_reading()

    def on_response_complete(self) -> None:
        """After uvicorn starts the next queued request: feed held bytes, or refuse."""
        super().on_response_complete()
        if self.transport.is_closing():
            return
        if self._stopped:
            self._finish_if_answered()
        elif self._held and len(self.pipeline) < MAX_PIPELINED_REQUESTS:
            held, self._held = self._held, b""
            self.flow.holding = False
            self._feed(held)
            if not self._held and not self._stopped:
                self.flow.resume_reading()

    # Parser callbacks: after a refusal the rest of the slice is parsed but ignored.

    def on_message_begin(self) -> None:
        """A request head begins: count it afresh."""
        if self._stopped:
            return
        self._head_begun = True
        super().on_message_begin()

    def on_headers_complete(self) -> None:
        """The head is complete: check its fields, stop its timer, let uvicorn start it.

        The fields are checked here, once, rather than as each arrives: httptools hands
        a field over only once it is whole anyway, and ``MAX_HEAD_BYTES`` bounds them
        meanwhile.
        """
        if self._stopped:
            return
        self._check_head()
        # The head is at most the bytes charged to it plus this piece: a small one
        # cannot hold a long field, and most are small.
        if self._head_bytes + self._piece_bytes > MAX_FIELD_BYTES and any(
            len(name) + len(value) > MAX_FIELD_BYTES for name, value in self.headers
        ):
            self._refuse(431, f"a header field over {MAX_FIELD_BYTES} bytes")
        if self._stopped:
            return
        self._head_open = self._head_begun = self._first_head = False
        self._head_bytes = 0
        self._cancel_head_timer()
        super().on_headers_complete()

    def _check_head(self) -> None:
        """Refuse the open head if its target, size or field count is over the limit."""
        if len(self.url) > MAX_REQUEST_TARGET_BYTES:
            self._refuse(414, f"request-target over {MAX_REQUEST_TARGET_BYTES} bytes")
        elif self._head_bytes > MAX_HEAD_BYTES:
            self._refuse(431, f"request head over {MAX_HEAD_BYTES} bytes")
        elif self.headers is not None and len(self.headers) > MAX_FIELDS:
            self._refuse(431, f"more than {MAX_FIELDS} header fields")

    def on_body(self, body: bytes) -> None:
        """Pass body bytes to uvicorn, unless the request was refused."""
        if not self._stopped:
            super().on_body(body)

    def on_message_complete(self) -> None:
        """The request is complete: what follows is the next request's head."""
        if self._stopped:
            return
        self._head_open = True
        super().on_message_complete()

    # Refusals and the head timer.

    def _refuse(self, status: int | None, reason: str) -> None:
        """Stop reading; answer ``status`` (None: none) once earlier requests are answered."""
        if self._stopped:
            return
        level = logging.INFO if status in (414, 431) else logging.DEBUG
        log.log(level, "%s: %s", reason, status or "connection closed")
        self._stopped = True
        self._refusal = status
        self._held = b""
        self._cancel_head_timer()
        self.flow.holding = True
        self.flow.pause_reading()

    def _finish_if_answered(self) -> None:
        """Send the refusal and close, once every earlier request has been answered."""
        if self.transport.is_closing() or (
            self.cycle is not None and not self.cycle.response_complete
        ):
            return  # on_response_complete calls again after the last one
        transport = self.transport
        if self._refusal is None:
            transport.close()
            return
        transport.write(self._refusal_response(self._refusal))
        if not transport.can_write_eof():
            transport.close()
            return
        transport.write_eof()
        self._linger_timer = self.loop.call_later(LINGER_S, transport.abort)
        self.flow.holding = False
        self.flow.resume_reading()  # read and discard until the client closes

    def _refusal_response(self, status: int) -> bytes:
        """A short plain-text response with ``Connection: close``, as bytes."""
        phrase = REASON_PHRASES[status]
        body = f"{phrase}\n".encode("ascii")
        lines = [f"HTTP/1.1 {status} {phrase}\r\n".encode("ascii")]
        lines += [
            name + b": " + value + b"\r\n" for name, value in self.server_state.default_headers
        ]
        lines += [
            b"content-type: text/plain; charset=utf-8\r\n",
            b"content-length: %d\r\n" % len(body),
            b"x-content-type-options: nosniff\r\n",
            b"connection: close\r\n\r\n",
            body,
        ]
        return b"".join(lines)

    def _update_head_timer(self) -> None:
        """Run the head timer exactly while a head is open, begun (or the connection's
        first), and read; vend not reading because requests wait is not the client's
        doing."""
        wanted = (
            self._head_open
            and (self._head_begun or self._first_head)
            and not self._stopped
            and not self.flow.read_paused
            and not self.transport.is_closing()
        )
        if wanted and self._head_timer is None:
            self._head_timer = self.loop.call_later(self.request_head_s, self._head_timed_out)
        elif not wanted:
            self._cancel_head_timer()

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        """408 (RFC 9110 section 15.5.9) for a partial head; a silent close for none."""
        self._head_timer = None
        if self.transport.is_closing():
            return
        status = 408 if self._head_begun else None
        self._refuse(status, f"no complete request head within {self.request_head_s} s")
        self._finish_if_answered()

"""vend's HTTP/1.1 connection (RFC 9112) on httptools, run by uvicorn.

uvicorn keeps the listening sockets, lifespan, signals and logging set-up; it makes one
``VendProtocol`` per connection through ``uvicorn.Config(http=...)`` (see
``protocol_class``) and calls ``shutdown()`` on each at a graceful exit.

A connection answers in request order through one queue (``app.server.answers``):
pipelined answers leave whole and in order whatever path each takes, and a refusal goes
out only after every earlier answer. Reading stops while ``MAX_PIPELINED_REQUESTS``
requests wait, or while the transport's buffer is above its high-water mark; a client
that accepts nothing for ``send_s`` seconds is cut off (``app.server.flow``). This
module keeps the connection itself: its asyncio callbacks, reading, and the state it
follows.

The parts: ``app.server.framing`` reads requests (the parser, RFC 9112 framing, the
head limits) and hands each complete one to ``app.server.dispatch`` (the hot path or
the application); ``app.server.answers`` sends the answers in order, and the refusals;
``app.server.flow`` keeps reading and writing in step; ``app.server.clock`` runs the
deadlines; the reading side follows the state machine of ``app.server.limits``. Every
refusal is counted in ``vend_requests_total`` and written to the access log.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections import deque
from collections.abc import Callable
from typing import Any

from uvicorn.config import Config
from uvicorn.protocols.utils import get_local_addr, get_remote_addr, is_ssl
from uvicorn.server import ServerState

from app.asgi import VendApp
from app.server.answers import AnswerQueue, _RefusalEntry
from app.server.clock import DeadlineTimer
from app.server.cold import ColdRequest
from app.server.dispatch import RequestDispatch
from app.server.flow import FlowControl
from app.server.framing import READING, RequestReader
from app.server.hotpath import DateField, HotPath, hot_path_for
from app.server.limits import (
    MAX_HEAD_BYTES,
    Event,
    ProtocolLimits,
    ReadState,
    next_state,
)
from app.server.trust import find_vend_app, trusted_client_finder
from app.server.writer import AsgiCycle

log = logging.getLogger("vend.protocol")

_IDLE, _HEAD, _BODY, _DONE = ReadState.IDLE, ReadState.HEAD, ReadState.BODY, ReadState.DONE


class VendProtocol(AnswerQueue, FlowControl, RequestDispatch, DeadlineTimer, asyncio.Protocol):
    """One HTTP/1.1 connection. uvicorn constructs it; the arguments are uvicorn's.

    Args:
        config: uvicorn's configuration (its ``loaded_app`` is run for each request).
        server_state: uvicorn's shared server state (connections, tasks, counts).
        app_state: the lifespan state, copied into each scope.
        _loop: the event loop (uvicorn passes it; None: the running loop).
        limits: vend's timeouts (``protocol_class`` binds them).
    """

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
        limits: ProtocolLimits | None = None,
    ) -> None:
        if not config.loaded:
            config.load()
        self.config = config
        self.app = config.loaded_app
        self.loop = _loop or asyncio.get_event_loop()
        self.server_state = server_state
        self.app_state = app_state
        self.limits = limits or ProtocolLimits()
        self.vend: VendApp | None = find_vend_app(self.app)
        self.hot: HotPath | None = None
        if self.vend is not None:
            self.hot = hot_path_for(self.vend, lambda: trusted_client_finder(config))
            self._trusted_client = self.hot.trusted_client
        else:
            self._trusted_client = trusted_client_finder(config)
        self.date: DateField = self.hot.date if self.hot is not None else DateField()
        self.state = ReadState.IDLE
        self.disconnected = False
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self._queue: deque[AsgiCycle | ColdRequest | tuple[bytes, bool] | _RefusalEntry] = deque()
        self._active: AsgiCycle | ColdRequest | None = None
        self._read_paused = False
        self._write_paused = False
        self._served = 0
        self._deadline = 0.0
        self._deadline_kind: str | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._send_timer: asyncio.TimerHandle | None = None
        self._linger_timer: asyncio.TimerHandle | None = None
        self._drained: asyncio.Future[None] | None = None
        self._gone: asyncio.Future[None] | None = None
        self.reader = RequestReader(self)

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Start the connection: register it with uvicorn and arm the first-byte timer.

        Past ``limits.max_connections`` open connections it is closed at once instead
        (counted in ``vend_connections_refused_total``).
        """
        self.transport = transport  # type: ignore[assignment]
        cap = self.limits.max_connections
        if cap is not None and len(self.server_state.connections) >= cap:
            # Past limits.max_connections: closed at once; the others go on being served.
            self.disconnected = True
            self.state = ReadState.CLOSED
            if self.vend is not None:
                self.vend.metrics.connections_refused.inc()
            transport.abort()  # type: ignore[attr-defined]
            return
        self.server_state.connections.add(self)  # type: ignore[arg-type]
        self._server = get_local_addr(self.transport)
        self._client = get_remote_addr(self.transport)
        self._scheme = "https" if is_ssl(self.transport) else "http"
        self._sync()

    def connection_lost(self, exc: Exception | None) -> None:
        """Forget the connection; running answers see ``disconnected`` and stop."""
        self.server_state.connections.discard(self)
        self.state = next_state(self.state, Event.LOST)
        self.disconnected = True
        self._drop_queue()
        if isinstance(self._active, ColdRequest):
            self._active.drop()
        self.reader.held = b""
        for timer in (self._timer, self._send_timer, self._linger_timer):
            if timer is not None:
                timer.cancel()
        for future in (self._drained, self._gone):
            if future is not None and not future.done():
                future.set_result(None)

    def eof_received(self) -> bool:
        """The client closed its side: answer what was asked, read nothing more."""
        if self.state is ReadState.LINGER or (self._active is None and not self._queue):
            self.transport.close()
            return False
        self.state = next_state(self.state, Event.STOP)
        return True

    def data_received(self, data: bytes) -> None:
        """Feed received bytes to the parser within the limits, then answer."""
        state = self.state
        if (
            state is _IDLE
            and not self._queue
            and self._active is None
            and not self.reader.held
            and not self.reader.tail
            and len(data) <= MAX_HEAD_BYTES
            and data.endswith(b"\r\n\r\n")
            and data.count(b"\r\n\r\n") == 1
        ):
            # The common read: exactly one whole request head, nothing waiting before it.
            hot = self.hot
            known = hot.heads.get(data) if hot is not None else None
            if known is None or not self._answer_known(known):
                self.reader.feed_head(data)
            if self.state is _IDLE and not self._write_paused and self._active is None:
                if self._deadline_kind == "idle":  # moved on: two assignments, no new timer
                    self._deadline = self.loop.time() + self.limits.keep_alive_s
                else:
                    self.set_deadline("idle")
                return
            self._sync()
            return
        if state not in READING:
            return  # DONE: nothing more is read; LINGER: discarded
        reader = self.reader
        if reader.held:
            data, reader.held = reader.held + data, b""
        reader.feed(data)
        self._sync()

    # Writing, closing, and following the state.

    async def wait_disconnected(self) -> None:
        """Wait until the connection is gone."""
        if self.disconnected:
            return
        if self._gone is None:
            self._gone = self.loop.create_future()
        await self._gone

    def write(self, data: bytes) -> None:
        """Write bytes of the current answer (nothing once disconnected).

        Args:
            data: the bytes.
        """
        if not self.disconnected:
            self.transport.write(data)

    def abort(self, why: str) -> None:
        """Abort the connection at once (a body could not be completed).

        Args:
            why: for the debug log.
        """
        log.debug("aborting connection: %s", why)
        self.disconnected = True
        if self._active is not None:
            self._active.keep_alive = False
        self.transport.abort()

    def shutdown(self) -> None:
        """uvicorn's graceful exit: finish the answer in flight, then close."""
        if self.state in READING:
            self.state = next_state(self.state, Event.STOP)
        if self._active is None:
            self._close()
            return
        self._drop_queue()
        self._active.keep_alive = False

    def _sync(self) -> None:
        """Set reading and the timer from the state; close when nothing is left to do."""
        if self.state is _DONE and self._active is None and not self._queue:
            self._close()  # the client half-closed, or shutdown: every answer is out
            return
        self._sync_reading()
        if self.state is _IDLE and self._active is None and not self._queue:
            self.set_deadline("first" if self._served == 0 else "idle")
        elif self.state is _HEAD or self.state is _BODY:
            if self._read_paused:
                self.set_deadline(None)
            elif self._deadline_kind != "request":
                self.set_deadline("request")
        else:
            self.set_deadline(None)


def protocol_class(limits: ProtocolLimits) -> Callable[..., VendProtocol]:
    """What ``uvicorn.Config(http=...)`` takes: ``VendProtocol`` bound to ``limits``.

    Args:
        limits: the timeouts from the settings.

    Returns:
        A callable uvicorn calls as ``http(config=..., server_state=..., app_state=...)``
        for each connection (picklable, for worker processes).
    """
    return functools.partial(VendProtocol, limits=limits)

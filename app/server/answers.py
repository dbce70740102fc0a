"""The connection's answer queue: every answer leaves whole and in request order.

``AnswerQueue`` is the part of ``VendProtocol`` (``app.server.connection``) that sends
the answers. Every request parsed becomes, in order, either a ready answer (a refusal,
or the hot path's prebuilt bytes, ``app.server.hotpath``), a ``ColdRequest`` waiting for
the lookup of its name (``app.server.cold``), or an ``AsgiCycle`` run through the
application (``app.server.writer``). Only the first entry writes; the next
starts when it is done (``cycle_done``). So pipelined answers leave whole and in order
whatever path each takes, and a refusal goes out only after every earlier answer, then
the write side is shut and the connection lingers (reads and discards) for
``LINGER_S`` seconds.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import TYPE_CHECKING, Any

from uvicorn.server import ServerState

from app.contract import close_found
from app.server.cold import ColdRequest
from app.server.framing import READING, RequestReader, record_refusal, refusal_response
from app.server.hotpath import DateField
from app.server.limits import LINGER_S, Event, ProtocolMixin, ReadState, next_state
from app.server.trust import ClientFinder
from app.server.writer import AsgiCycle

if TYPE_CHECKING:
    from app.asgi import VendApp

log = logging.getLogger("vend.protocol")


class _RefusalEntry:
    """A refusal (or, with no bytes, a silent close) waiting in the answer queue."""

    __slots__ = ("data",)

    def __init__(self, data: bytes | None) -> None:
        self.data = data


class AnswerQueue(ProtocolMixin):
    """Mixin of ``VendProtocol``: the answers, in order (see the module docstring).

    It comes first among ``VendProtocol``'s bases, so its methods take the place of the
    placeholders the other mixins declare (``_emit``, ``_close``, ``refuse``).
    """

    app: Any
    vend: VendApp | None
    server_state: ServerState
    transport: asyncio.Transport
    loop: asyncio.AbstractEventLoop
    state: ReadState
    disconnected: bool
    reader: RequestReader
    date: DateField
    _client: tuple[str, int] | None
    _trusted_client: ClientFinder | None
    _queue: deque[AsgiCycle | ColdRequest | tuple[bytes, bool] | _RefusalEntry]
    _active: AsgiCycle | ColdRequest | None
    _served: int
    _read_paused: bool
    _linger_timer: asyncio.TimerHandle | None

    if TYPE_CHECKING:  # for mypy only: a placeholder here would hide FlowControl's

        def set_deadline(self, kind: str | None) -> None: ...

        def _pump(self) -> None: ...

        def _sync_reading(self) -> None: ...

    def _emit(self, entry: AsgiCycle | ColdRequest | bytes, keep_alive: bool) -> None:
        """Queue an answer (bytes, a cycle, or a request waiting for its lookup); write
        or start it at once if it is first."""
        item: AsgiCycle | ColdRequest | tuple[bytes, bool] = (
            (entry, keep_alive) if isinstance(entry, bytes) else entry
        )
        if self._active is None and not self._queue and isinstance(item, tuple):
            self._served += 1
            self.server_state.total_requests += 1
            self.transport.write(item[0])
            if not keep_alive:
                self._close()
            return
        self._queue.append(item)
        if self._active is None:
            self._advance()

    def _advance(self) -> None:
        """Write ready answers and start the next cycle, in order, while none runs."""
        while self._active is None and self._queue and not self.disconnected:
            entry = self._queue.popleft()
            if isinstance(entry, ColdRequest):
                if entry.answer is None:
                    self._active = entry  # its lookup runs: ``cold_answered`` goes on
                    return
                entry = entry.answer
            if isinstance(entry, tuple):
                self._served += 1
                self.server_state.total_requests += 1
                self.transport.write(entry[0])
                if not entry[1]:
                    self._close()
                    return
            elif isinstance(entry, AsgiCycle):
                self._active = entry
                task = self.loop.create_task(entry.run(self.app))
                self.server_state.tasks.add(task)
                task.add_done_callback(self.server_state.tasks.discard)
            else:
                self._send_refusal(entry)
                return

    def _drop_queue(self) -> None:
        """Forget the answers not started; close any file a dropped cycle's verdict holds
        (``app.server.cold``). A request waiting for its lookup first is not dropped: it
        is the answer in flight (``connection_lost`` drops it)."""
        for entry in self._queue:
            if isinstance(entry, ColdRequest):
                entry.drop()
            elif isinstance(entry, AsgiCycle):
                close_found(entry.scope)
        self._queue.clear()

    def cold_answered(self, request: ColdRequest) -> None:
        """A request's lookup is done and its answer made: go on if it was first.

        Args:
            request: the request (``request.answer`` is set).
        """
        if self._active is not request:
            return  # still queued behind earlier answers: ``_advance`` reaches it
        self._active = None
        self._queue.appendleft(request)
        self._advance()
        self._pump()

    def cycle_done(self, cycle: AsgiCycle) -> None:
        """A cycle ended: close if it said so, else go on with the queue.

        Args:
            cycle: the cycle that ran.
        """
        self._active = None
        self._served += 1
        self.server_state.total_requests += 1
        if self.disconnected:
            return
        if not cycle.keep_alive or not cycle.complete:
            self._close()
            return
        self._advance()
        self._pump()

    def _close(self) -> None:
        """Close after what is written; read nothing more."""
        if self.state in READING:
            self.state = next_state(self.state, Event.STOP)
        self._drop_queue()
        self.set_deadline(None)
        self.transport.close()

    # Refusals.

    def refuse(
        self, status: int | None, reason: str, headers: tuple[tuple[bytes, bytes], ...] = ()
    ) -> None:
        """Stop reading; answer ``status`` (None: close silently) after earlier answers.

        Args:
            status: the refusal's status code, or None.
            reason: for the log.
            headers: extra response fields.
        """
        if self.state not in READING:
            return
        log.log(logging.INFO if status in (414, 431) else logging.DEBUG, "%s: %s", reason, status)
        self.state = next_state(self.state, Event.REFUSE)
        reader = self.reader
        reader.held = b""
        self.set_deadline(None)
        data = None
        if status is not None:
            line = reader.request_line()
            head = line is not None and line.startswith(b"HEAD ")
            data, body_bytes = refusal_response(status, self.date(), head, headers)
            client = self._client
            if self._trusted_client is not None and line is not None:
                client = self._trusted_client(client, reader.headers)
            record_refusal(self.vend, client, status, body_bytes, line, reader.headers)
        reader.reset_request()
        self._queue.append(_RefusalEntry(data))
        if self._active is None:
            self._advance()

    def _send_refusal(self, entry: _RefusalEntry) -> None:
        """Write the refusal, shut the write side and linger (read and discard)."""
        self.state = next_state(self.state, Event.REFUSAL_SENT)
        transport = self.transport
        if entry.data is None or not transport.can_write_eof():
            if entry.data is not None:
                self.server_state.total_requests += 1
                transport.write(entry.data)
            transport.close()
            return
        self.server_state.total_requests += 1
        transport.write(entry.data)
        transport.write_eof()
        self._linger_timer = self.loop.call_later(LINGER_S, transport.abort)
        self._read_paused = True  # reading resumes to discard
        self._sync_reading()

"""The connection's flow control: read no faster than answers leave, cut off a stuck client.

``FlowControl`` is the part of ``VendProtocol`` (``app.server.connection``) that keeps
reading and writing in step. Reading pauses while ``MAX_PIPELINED_REQUESTS`` requests
wait for their answers, or while the transport's buffer is above its high-water mark
(``pause_writing``); bytes read meanwhile are held and fed to the parser when there is
room again (``_pump``). A writer waits in ``drain`` until the transport takes more; a
client that accepts nothing for ``send_s`` seconds is cut off.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import TYPE_CHECKING, Any

from app.server.framing import READING, RequestReader
from app.server.limits import MAX_PIPELINED_REQUESTS, ProtocolLimits, ProtocolMixin, ReadState


class FlowControl(ProtocolMixin):
    """Mixin of ``VendProtocol``: reading and writing in step (see the module docstring)."""

    limits: ProtocolLimits
    loop: asyncio.AbstractEventLoop
    transport: asyncio.Transport
    state: ReadState
    disconnected: bool
    reader: RequestReader
    _queue: deque[Any]
    _read_paused: bool
    _write_paused: bool
    _send_timer: asyncio.TimerHandle | None
    _drained: asyncio.Future[None] | None

    if TYPE_CHECKING:  # for mypy only: VendProtocol's own

        def abort(self, why: str) -> None: ...

        def _sync(self) -> None: ...

    def pause_writing(self) -> None:
        """The transport's buffer is full: stop reading and start the send timer."""
        self._write_paused = True
        if self._send_timer is None:
            self._send_timer = self.loop.call_later(self.limits.send_s, self._send_timed_out)
        self._sync_reading()

    def resume_writing(self) -> None:
        """The transport's buffer drained: release writers, read again."""
        self._write_paused = False
        if self._send_timer is not None:
            self._send_timer.cancel()
            self._send_timer = None
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)
        self._drained = None
        self._pump()

    def _pump(self) -> None:
        """Feed held bytes when there is room again; set reading and timers."""
        reader = self.reader
        if reader.feeding or self.disconnected:
            return
        if reader.held and not self.queue_full():
            data, reader.held = reader.held, b""
            reader.feed(data)
        self._sync()

    async def drain(self) -> None:
        """Wait until the transport takes more bytes (or the connection is gone)."""
        if not self._write_paused or self.disconnected:
            return
        if self._drained is None:
            self._drained = self.loop.create_future()
        await self._drained

    def queue_full(self) -> bool:
        """True while no more requests may be parsed: the pipeline is full or the
        transport's buffer is over its high-water mark."""
        return len(self._queue) >= MAX_PIPELINED_REQUESTS or self._write_paused

    def _sync_reading(self) -> None:
        state = self.state
        want = state is ReadState.LINGER or (
            state in READING and not self.reader.held and not self.queue_full()
        )
        if want == self._read_paused and self.transport is not None:
            self._read_paused = not want
            if self.transport.is_closing():
                return
            if want:
                self.transport.resume_reading()
            else:
                self.transport.pause_reading()

    def _send_timed_out(self) -> None:
        self._send_timer = None
        if not self.disconnected:
            self.abort(f"client accepted nothing for {self.limits.send_s} s")

"""vend's HTTP protocol for uvicorn: httptools plus the ASGI zero-copy send extension.

Released uvicorn offers no sendfile. ``VendHttpToolsProtocol`` is uvicorn's httptools
protocol with one addition: on plain-HTTP connections it offers the ASGI extension
``http.response.zerocopysend`` in ``scope["extensions"]`` and carries out those messages
with sendfile(2), in worker threads, as ``app.server.sendfile`` explains; it writes a response's
head and whole body in one system call; and it bounds what a client can make it hold
(``app.server.limits``: request head size, pipelined requests, slow heads). Everything else
(parsing, keep-alive, flow control, Date header, graceful shutdown) is uvicorn's own.

It relies on these uvicorn internals, pinned in ``pyproject.toml`` and checked by
``tests/unit/test_uvicorn_contract.py``: ``HttpToolsProtocol.on_message_begin`` builds
``self.scope``; ``HttpToolsProtocol._start_asgi_task(cycle, app)`` starts each request;
``RequestResponseCycle`` has ``send``, ``transport``, ``flow``, ``disconnected``,
``response_started``, ``response_complete`` and ``expected_content_length``.

A failure while sending (client gone, file shrank, mount error or timeout) aborts the
connection: a body shorter than its Content-Length is never completed.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from concurrent.futures import Executor
from typing import Any, Final

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

from app.contract import UNSENT_KEY, ZEROCOPY, ShortFileError
from app.federation.threads import DaemonPool, PoolFull, QueueTimeout, RunTimeout, call_in
from app.server.limits import RequestLimits
from app.server.sendfile import send_chunk_owned, wait_writable
from app.types import Message

DEFAULT_TIMEOUT_S: Final = 30.0
"""Timeout of a sendfile chunk and of a client that accepts nothing, when the message
does not say (``vend.timeout_s``), in seconds."""

log = logging.getLogger("vend.protocol")


class ZeroCopySend:
    """The ``send`` callable of one request: uvicorn's, plus zero-copy send messages.

    Args:
        cycle: uvicorn's request-response cycle of the request.
        loop: the running event loop.
        send_timeout_s: how long a client may accept no bytes, in seconds.
    """

    __slots__ = ("_cycle", "_held_start", "_loop", "_send", "_send_timeout_s")

    def __init__(
        self, cycle: RequestResponseCycle, loop: asyncio.AbstractEventLoop, send_timeout_s: float
    ) -> None:
        self._cycle = cycle
        self._loop = loop
        self._send = RequestResponseCycle.send.__get__(cycle)
        self._send_timeout_s = send_timeout_s
        self._held_start: Message | None = None

    async def __call__(self, message: Message) -> None:
        """Send one ASGI message.

        The response start is held until the next message: when that is the whole body
        (a small file from memory, an error), head and body leave in one write, one
        system call instead of two.

        Raises:
            RuntimeError: a zero-copy send before the response start, after its end, or
                longer than the Content-Length left (as uvicorn raises for bodies).
        """
        kind = message["type"]
        if kind == "http.response.start":
            # A later start replaces one that never went out: uvicorn's own 500 after an
            # application error that came between the start and the body.
            self._held_start = message
            return
        held, self._held_start = self._held_start, None
        if held is not None:
            if kind == "http.response.body" and not message.get("more_body", False):
                await self._send_coalesced(held, message)
                return
            await self._send(held)
        if kind != ZEROCOPY:
            await self._send(message)
            return
        cycle = self._cycle
        if cycle.disconnected:
            return
        if not cycle.response_started or cycle.response_complete:
            raise RuntimeError("zero-copy send outside a response body")
        offset = int(message.get("offset", 0))
        count = int(message["count"])
        more_body = bool(message.get("more_body", False))
        if cycle.scope["method"] == "HEAD":
            count = 0
        elif count > cycle.expected_content_length:
            raise RuntimeError("Response content longer than Content-Length")
        if count:
            ok = await self._sendfile(
                message["file"].fileno(),
                offset,
                count,
                message.get("vend.executor"),
                float(message.get("vend.timeout_s", DEFAULT_TIMEOUT_S)),
            )
            if not ok:
                return
            cycle.expected_content_length -= count
        if not more_body:
            await self._send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _send_coalesced(self, start: Message, body: Message) -> None:
        """uvicorn's sends of a head and a complete body, written to the socket at once."""
        cycle = self._cycle
        transport = cycle.transport
        collector = _WriteCollector()
        cycle.transport = collector  # type: ignore[assignment]
        try:
            await self._send(start)
            await self._send(body)
        finally:
            cycle.transport = transport
            if collector.chunks and not transport.is_closing():
                transport.write(b"".join(collector.chunks))
            if collector.close_requested:
                transport.close()

    async def _sendfile(
        self, file_fd: int, offset: int, count: int, executor: Executor | None, timeout_s: float
    ) -> bool:
        """Send the bytes; on any failure abort the connection and return False."""
        cycle, loop = self._cycle, self._loop
        transport = cycle.transport
        if cycle.flow.write_paused:
            await cycle.flow.drain()
        sock: Any = transport.get_extra_info("socket")
        try:
            await self._wait_buffer_empty()
            sock_fd = os.dup(sock.fileno())  # the loop's own: waits and shutdown
        except (OSError, TimeoutError, AttributeError):
            self._abort("client gone before the body")
            return False
        sent = 0
        try:
            while sent < count:
                n, blocked = await self._chunk(
                    executor, sock_fd, file_fd, offset + sent, count - sent, timeout_s
                )
                sent += n
                if blocked and sent < count:
                    await wait_writable(loop, sock_fd, self._send_timeout_s)
            return True
        except ShortFileError:
            log.warning("file shrank while being sent; connection aborted")
        except RunTimeout:
            log.warning("sendfile ran over its %s s timeout; connection aborted", timeout_s)
            _shutdown(sock_fd)  # wakes a thread blocked on the socket side
        except QueueTimeout:
            log.warning(
                "no thread for sendfile within %s s; connection aborted", self._send_timeout_s
            )
        except TimeoutError:
            log.debug("client accepted no data for %s s; connection aborted", self._send_timeout_s)
        except OSError as exc:
            log.debug("sendfile stopped: %s", exc)
        finally:
            os.close(sock_fd)
        # What the access log and metrics should not count as sent (ASGI scope extension).
        scope: dict[str, Any] = cycle.scope  # type: ignore[assignment]
        scope[UNSENT_KEY] = scope.get(UNSENT_KEY, 0) + count - sent
        self._abort("body not completed")
        return False

    async def _chunk(
        self,
        executor: Executor | None,
        sock_fd: int,
        file_fd: int,
        offset: int,
        count: int,
        timeout_s: float,
    ) -> tuple[int, bool]:
        """One ``send_chunk`` in a worker thread, on descriptors the thread owns.

        The thread gets duplicates of the socket and the file and closes them itself, so
        whatever the event loop closes meanwhile (after a timeout, a disconnect, the
        application closing its file) can never be reused under a running sendfile.
        """
        owned = (os.dup(sock_fd), os.dup(file_fd))
        try:
            if isinstance(executor, DaemonPool):
                return await call_in(
                    executor,
                    send_chunk_owned,
                    *owned,
                    offset,
                    count,
                    run_timeout_s=timeout_s,
                    queue_timeout_s=self._send_timeout_s,
                )
            future = self._loop.run_in_executor(executor, send_chunk_owned, *owned, offset, count)
            try:
                return await asyncio.wait_for(asyncio.shield(future), timeout_s)
            except TimeoutError:
                raise RunTimeout("sendfile") from None
        except (PoolFull, QueueTimeout):
            for fd in owned:  # the thread never ran: the descriptors are still ours
                os.close(fd)
            raise QueueTimeout("sendfile") from None

    async def _wait_buffer_empty(self) -> None:
        """Wait until the transport has flushed what it holds (the response head)."""
        transport = self._cycle.transport
        deadline = time.monotonic() + self._send_timeout_s
        delay = 0.0005
        while transport.get_write_buffer_size():
            if transport.is_closing():
                raise OSError("transport closing")
            if time.monotonic() > deadline:
                raise TimeoutError
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.05)

    def _abort(self, why: str) -> None:
        cycle = self._cycle
        cycle.disconnected = True
        cycle.keep_alive = False
        log.debug("aborting connection: %s", why)
        cycle.transport.abort()


class _WriteCollector:
    """Stands in for the transport while uvicorn writes one response: collects the bytes."""

    __slots__ = ("chunks", "close_requested")

    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.close_requested = False

    def write(self, data: bytes) -> None:
        self.chunks.append(data)

    def close(self) -> None:
        self.close_requested = True

    def is_closing(self) -> bool:
        return self.close_requested


def _shutdown(fd: int) -> None:
    """Shut a socket down for both directions through one of its descriptors."""
    sock = socket.socket(fileno=os.dup(fd))
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    finally:
        sock.close()


class VendHttpToolsProtocol(RequestLimits, HttpToolsProtocol):
    """uvicorn's httptools protocol offering ``http.response.zerocopysend`` on plain HTTP."""

    send_timeout_s: float = DEFAULT_TIMEOUT_S

    def on_message_begin(self) -> None:
        """Start a request's scope, adding the zero-copy extension where it can work."""
        super().on_message_begin()
        if self.scheme == "http":
            self.scope["extensions"] = {ZEROCOPY: {}}

    def _start_asgi_task(self, cycle: RequestResponseCycle, app: Any) -> None:
        cycle.send = ZeroCopySend(cycle, self.loop, self.send_timeout_s)  # type: ignore[method-assign,assignment]
        super()._start_asgi_task(cycle, app)

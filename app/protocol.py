"""vend's HTTP protocol for uvicorn: httptools plus the ASGI zero-copy send extension.

Released uvicorn offers no sendfile. ``VendHttpToolsProtocol`` is uvicorn's httptools
protocol with one addition: on plain-HTTP connections it offers the ASGI extension
``http.response.zerocopysend`` in ``scope["extensions"]`` and carries out those messages
with sendfile(2), in worker threads, as ``app.sendfile`` explains. Everything else
(parsing, keep-alive, pipelining, flow control, Date header, graceful shutdown) is
uvicorn's own.

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
import functools
import logging
import os
import socket
from concurrent.futures import Executor
from typing import Any, Final

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

from app.responses import ShortFileError
from app.sendfile import send_chunk, wait_writable
from app.types import Message

ZEROCOPY: Final = "http.response.zerocopysend"
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

    __slots__ = ("_cycle", "_loop", "_send", "_send_timeout_s")

    def __init__(
        self, cycle: RequestResponseCycle, loop: asyncio.AbstractEventLoop, send_timeout_s: float
    ) -> None:
        self._cycle = cycle
        self._loop = loop
        self._send = RequestResponseCycle.send.__get__(cycle)
        self._send_timeout_s = send_timeout_s

    async def __call__(self, message: Message) -> None:
        """Send one ASGI message.

        Raises:
            RuntimeError: a zero-copy send before the response start, after its end, or
                longer than the Content-Length left (as uvicorn raises for bodies).
        """
        if message["type"] != ZEROCOPY:
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
            sock_fd = os.dup(sock.fileno())
        except (OSError, TimeoutError, AttributeError):
            self._abort("client gone before the body")
            return False
        future = None
        try:
            sent = 0
            while sent < count:
                future = loop.run_in_executor(
                    executor, send_chunk, sock_fd, file_fd, offset + sent, count - sent
                )
                n, blocked = await asyncio.wait_for(asyncio.shield(future), timeout_s)
                future = None
                sent += n
                if blocked and sent < count:
                    await wait_writable(loop, sock_fd, self._send_timeout_s)
            return True
        except ShortFileError:
            log.warning("file shrank while being sent; connection aborted")
        except TimeoutError:
            log.warning("sendfile timed out; connection aborted")
        except OSError as exc:
            log.debug("sendfile stopped: %s", exc)
        finally:
            if future is not None and not future.done():
                # The thread is still inside sendfile: wake it (socket side) and let it
                # close the duplicate when it returns, never before.
                _shutdown(sock_fd)
                future.add_done_callback(functools.partial(_close_later, sock_fd))
            else:
                os.close(sock_fd)
        self._abort("body not completed")
        return False

    async def _wait_buffer_empty(self) -> None:
        """Wait until the transport has flushed what it holds (the response head)."""
        transport = self._cycle.transport
        for _ in range(int(self._send_timeout_s * 1000)):
            if transport.get_write_buffer_size() == 0:
                return
            if transport.is_closing():
                raise OSError("transport closing")
            await asyncio.sleep(0.001)
        raise TimeoutError

    def _abort(self, why: str) -> None:
        cycle = self._cycle
        cycle.disconnected = True
        cycle.keep_alive = False
        log.debug("aborting connection: %s", why)
        cycle.transport.abort()


def _close_later(fd: int, _future: object) -> None:
    """Done-callback: close a duplicate descriptor once its thread has let go of it."""
    os.close(fd)


def _shutdown(fd: int) -> None:
    """Shut a socket down for both directions through one of its descriptors."""
    sock = socket.socket(fileno=os.dup(fd))
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    finally:
        sock.close()


class VendHttpToolsProtocol(HttpToolsProtocol):
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

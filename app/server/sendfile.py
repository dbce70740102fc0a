"""sendfile(2) from a file to a client socket, without stalling the event loop.

Why threads: sendfile's file side reads the page cache, or the network filesystem when
the pages are not cached; on a hung NFS server that read blocks in the kernel, and no
non-blocking flag helps. So the sendfile calls never run on the event loop. Each call of
``send_chunk`` runs in a worker thread of the file's own mount (one thread hand-off per
chunk, not per request byte), on a *duplicate* of the socket's descriptor, so that the
event loop may close its own descriptor at any time without the thread's number being
reused underneath it.

The socket stays non-blocking (the event loop owns it). A thread that meets a full
socket buffer waits for it in ``poll(2)`` for at most ``POLL_S`` seconds and then gives
the thread back: a slow client waits on the event loop (``wait_writable``), not in a
thread, so slow clients cannot use up a mount's threads.
"""

from __future__ import annotations

import asyncio
import logging
import os
import select
import socket
import time
from concurrent.futures import Executor
from typing import Any, Final

from app.contract import ShortFileError
from app.federation.threads import DaemonPool, PoolFull, QueueTimeout, RunTimeout, call_in

log = logging.getLogger("vend.protocol")

POLL_S: Final = 0.05
"""Longest a thread waits for a full socket buffer to drain, in seconds."""
THREAD_BUDGET_S: Final = 0.5
"""Longest one ``send_chunk`` keeps its thread while the client keeps up, in seconds."""
MAX_CALL_BYTES: Final = 0x7FFFF000
"""Most bytes Linux moves in one sendfile call."""


def send_chunk(sock_fd: int, file_fd: int, offset: int, count: int) -> tuple[int, bool]:
    """Send up to ``count`` bytes of a file with sendfile(2). Blocking: run in a thread.

    Args:
        sock_fd: a (duplicated) descriptor of the non-blocking client socket.
        file_fd: the open file.
        offset: where to start in the file, in bytes.
        count: how many bytes to send at most.

    Returns:
        ``(sent_bytes, blocked)``: ``blocked`` is True when the call returned early
        because the client did not drain its socket within ``POLL_S`` seconds or the
        thread used its ``THREAD_BUDGET_S``; the caller then waits on the event loop.

    Raises:
        ShortFileError: the file ended before ``count`` bytes (it shrank).
        OSError: the client went away (EPIPE, ECONNRESET) or the file failed (EIO...).
    """
    poller = select.poll()
    poller.register(sock_fd, select.POLLOUT)
    deadline = time.monotonic() + THREAD_BUDGET_S
    sent = 0
    while sent < count:
        try:
            n = os.sendfile(sock_fd, file_fd, offset + sent, min(count - sent, MAX_CALL_BYTES))
        except BlockingIOError:
            if time.monotonic() >= deadline or not poller.poll(int(POLL_S * 1000)):
                return sent, True
            continue
        except InterruptedError:
            continue
        if n == 0:
            raise ShortFileError("file shrank while being sent")
        sent += n
    return sent, False


def send_chunk_owned(sock_fd: int, file_fd: int, offset: int, count: int) -> tuple[int, bool]:
    """``send_chunk`` on descriptors this call owns: it closes both when it returns.

    Args:
        sock_fd: a duplicate of the client socket's descriptor, closed here.
        file_fd: a duplicate of the file's descriptor, closed here.
        offset: where to start in the file, in bytes.
        count: how many bytes to send at most.

    Returns:
        As ``send_chunk``.

    Raises:
        As ``send_chunk``.
    """
    try:
        return send_chunk(sock_fd, file_fd, offset, count)
    finally:
        os.close(sock_fd)
        os.close(file_fd)


async def wait_writable(loop: asyncio.AbstractEventLoop, fd: int, timeout_s: float) -> None:
    """Wait on the event loop until ``fd`` is writable.

    Args:
        loop: the running loop.
        fd: a duplicated socket descriptor (the loop's transport owns the original).
        timeout_s: how long to wait, in seconds.

    Raises:
        TimeoutError: the client accepted no data for ``timeout_s`` seconds.
    """
    ready: asyncio.Future[None] = loop.create_future()

    def on_writable() -> None:
        if not ready.done():
            ready.set_result(None)

    loop.add_writer(fd, on_writable)
    try:
        await asyncio.wait_for(ready, timeout_s)
    finally:
        loop.remove_writer(fd)


async def send_file_range(
    transport: asyncio.Transport,
    file_fd: int,
    offset: int,
    count: int,
    executor: Executor | None,
    timeout_s: float,
    send_s: float,
) -> int:
    """Send ``count`` bytes of a file to the transport's socket with sendfile(2).

    Waits until the transport has flushed what it holds (the response head), then
    sends in the mount's threads (``executor``), one ``send_chunk`` per hand-off,
    waiting on the event loop while the client's socket is full.

    Args:
        transport: the connection's transport (its socket is used, duplicated).
        file_fd: the open file.
        offset: where to start in the file, in bytes.
        count: how many bytes, in bytes.
        executor: the mount's threads (a ``DaemonPool``), or another executor.
        timeout_s: the longest one sendfile call may take (the mount's), in seconds.
        send_s: the longest the client may accept nothing, in seconds.

    Returns:
        The bytes sent: ``count``, or fewer when the client went away, the file shrank,
        the mount failed or a timeout passed (logged; the caller aborts the connection).
    """
    loop = asyncio.get_running_loop()
    sock: Any = transport.get_extra_info("socket")
    try:
        await _wait_buffer_empty(transport, send_s)
        sock_fd = os.dup(sock.fileno())  # the loop's own: waits and shutdown
    except (OSError, TimeoutError, AttributeError):
        log.debug("client gone before the body")
        return 0
    sent = 0
    try:
        while sent < count:
            n, blocked = await _chunk(
                loop, executor, sock_fd, file_fd, offset + sent, count - sent, timeout_s, send_s
            )
            sent += n
            if blocked and sent < count:
                await wait_writable(loop, sock_fd, send_s)
    except ShortFileError:
        log.warning("file shrank while being sent; connection aborted")
    except RunTimeout:
        log.warning("sendfile ran over its %s s timeout; connection aborted", timeout_s)
        _shutdown(sock_fd)  # wakes a thread blocked on the socket side
    except QueueTimeout:
        log.warning("no thread for sendfile within %s s; connection aborted", send_s)
    except TimeoutError:
        log.debug("client accepted no data for %s s; connection aborted", send_s)
    except OSError as exc:
        log.debug("sendfile stopped: %s", exc)
    finally:
        os.close(sock_fd)
    return sent


async def _chunk(
    loop: asyncio.AbstractEventLoop,
    executor: Executor | None,
    sock_fd: int,
    file_fd: int,
    offset: int,
    count: int,
    timeout_s: float,
    send_s: float,
) -> tuple[int, bool]:
    """One ``send_chunk`` in a worker thread, on descriptors the thread owns.

    The thread gets duplicates of the socket and the file and closes them itself, so
    whatever the event loop closes meanwhile can never be reused under a running
    sendfile.
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
                queue_timeout_s=send_s,
            )
        future = loop.run_in_executor(executor, send_chunk_owned, *owned, offset, count)
        try:
            return await asyncio.wait_for(asyncio.shield(future), timeout_s)
        except TimeoutError:
            raise RunTimeout("sendfile") from None
    except (PoolFull, QueueTimeout):
        for fd in owned:  # the thread never ran: the descriptors are still ours
            os.close(fd)
        raise QueueTimeout("sendfile") from None


async def _wait_buffer_empty(transport: asyncio.Transport, timeout_s: float) -> None:
    """Wait until the transport has flushed what it holds (the response head)."""
    deadline = time.monotonic() + timeout_s
    delay = 0.0005
    while transport.get_write_buffer_size():
        if transport.is_closing():
            raise OSError("transport closing")
        if time.monotonic() > deadline:
            raise TimeoutError
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.05)


def _shutdown(fd: int) -> None:
    """Shut a socket down for both directions through one of its descriptors."""
    sock = socket.socket(fileno=os.dup(fd))
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    finally:
        sock.close()

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
import os
import select
import time
from typing import Final

from app.contract import ShortFileError

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

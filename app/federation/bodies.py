"""A file's body on its mount: zero-copy send, or reads in the mount's own threads.

The body of a file goes out in one of two ways:

- ``http.response.zerocopysend`` (the ASGI zero-copy send extension), when the server
  offers it and the mount allows sendfile: the server sends straight from the descriptor
  with sendfile(2) (``app.server.writer`` does it for ``vend serve``). Memory stays
  flat whatever the file size.
- otherwise reads of ``CHUNK_BYTES`` in the mount's own threads (aiofiles, with the
  mount's executor and timeout), sent as ``http.response.body`` messages.

Either way a file that turns out shorter than the Content-Length already promised ends
the connection: the client never sees a complete-looking short response.
"""

from __future__ import annotations

import asyncio
from typing import Final

import aiofiles

from app.contract import ZEROCOPY, ShortFileError
from app.federation.open import OpenFile
from app.types import Send

CHUNK_BYTES: Final = 256 * 1024
"""Read size of the thread fallback, in bytes."""


class FileBody:
    """A body read from an open file: zero-copy send, or reads in the mount's threads.

    Args:
        file: the open file (the caller closes it).
        zerocopy: the server offers ``http.response.zerocopysend`` and the mount allows
            sendfile.
    """

    __slots__ = ("_file", "_zerocopy")

    def __init__(self, file: OpenFile, *, zerocopy: bool) -> None:
        self._file = file
        self._zerocopy = zerocopy

    async def write_range(self, send: Send, offset: int, count: int, *, more_body: bool) -> None:
        """Send ``count`` bytes from ``offset`` (bytes), as one or more body messages.

        Raises:
            ShortFileError: the file ended early (thread fallback).
            OSError, TimeoutError: a read failed or took longer than the mount's timeout.
        """
        if self._zerocopy:
            await send(
                {
                    "type": ZEROCOPY,
                    "file": self._file,
                    "offset": offset,
                    "count": count,
                    "more_body": more_body,
                    # vend's server runs the sendfile calls in the mount's own threads.
                    "vend.executor": self._file.mount.executor,
                    "vend.timeout_s": self._file.mount.fs_op_s,
                }
            )
            return
        await self._write_by_reading(send, offset, count, more_body=more_body)

    async def _write_by_reading(
        self, send: Send, offset: int, count: int, *, more_body: bool
    ) -> None:
        mount = self._file.mount
        if count == 0:
            await send({"type": "http.response.body", "body": b"", "more_body": more_body})
            return
        async with aiofiles.open(
            self._file.fd, "rb", buffering=0, closefd=False, executor=mount.executor
        ) as handle:
            await asyncio.wait_for(handle.seek(offset), mount.fs_op_s)
            remaining = count
            while remaining > 0:
                wanted = min(CHUNK_BYTES, remaining)
                data = await asyncio.wait_for(handle.read(wanted), mount.fs_op_s)
                if not data:
                    raise ShortFileError("file shrank while being sent")
                remaining -= len(data)
                await send(
                    {
                        "type": "http.response.body",
                        "body": data,
                        "more_body": more_body or remaining > 0,
                    }
                )

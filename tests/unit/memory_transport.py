"""vend's protocol on an in-memory transport: a real ``VendApp`` behind it, no socket.

``MemoryTransport`` records every byte the protocol writes, honours pause/resume of
reading (bytes are delivered only while reading), can play a slow reader (it calls
``pause_writing`` above a high-water mark until the test drains it), and reports close,
abort and write_eof. ``Server`` builds the application on temporary mounts and makes
connections the way uvicorn does (``config.http_protocol_class(config=...,
server_state=..., app_state=...)``). ``tests.support.parse_responses`` splits the bytes
written into responses by their Content-Length.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import uvicorn
from uvicorn.server import ServerState

from app.asgi import VendApp, create_app
from app.server.connection import VendProtocol, protocol_class
from app.server.limits import ProtocolLimits
from app.settings import Settings
from tests.support import Response, parse_responses

__all__ = ["Response", "parse_responses"]

SMALL = b"small file body\n"
PAGE = b"<html>a page on m2</html>\n"
BIG_BYTES = 300 * 1024  # over cache.max_file_bytes: read from the file in threads


def make_tree(base: Path) -> list[Path]:
    """Two mounts: small files on the first, a page and a big file on the second."""
    m1, m2 = base / "m1", base / "m2"
    (m1 / "dir").mkdir(parents=True)
    m2.mkdir()
    (m1 / "small.txt").write_bytes(SMALL)
    (m1 / "dir" / "nested.css").write_bytes(b"body { color: red }\n")
    (m1 / "index.html").write_bytes(b"<html>index</html>\n")
    (m2 / "page.html").write_bytes(PAGE)
    (m2 / "big.bin").write_bytes(bytes(range(256)) * (BIG_BYTES // 256))
    return [m1, m2]


class MemoryTransport(asyncio.Transport):
    """A transport in memory (see the module docstring).

    Args:
        loop: the running loop.
        high_water: bytes buffered before ``pause_writing`` is called; None: never.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, high_water: int | None = None) -> None:
        super().__init__()
        self.loop = loop
        self.protocol: VendProtocol | None = None
        self.out = bytearray()
        self.closed = self.eof = self.aborted = False
        self.reading = True
        self.high_water = high_water
        self.buffered = 0
        self.write_paused = False
        self.last_write_at: float | None = None
        """``time.monotonic()`` of the last write, in seconds (the loop's clock too)."""
        self.closed_at: float | None = None
        """``time.monotonic()`` when the protocol closed or shut the write side."""

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self.closed or self.eof:
            raise RuntimeError("write after close or write_eof")
        self.out += data
        self.last_write_at = time.monotonic()
        if self.high_water is not None:
            self.buffered += len(data)
            if self.buffered > self.high_water and not self.write_paused:
                self.write_paused = True
                assert self.protocol is not None
                self.protocol.pause_writing()

    def drain_client(self) -> None:
        """The client read everything: the buffer is empty again."""
        self.buffered = 0
        if self.write_paused and not self.closed:
            self.write_paused = False
            assert self.protocol is not None
            self.protocol.resume_writing()

    def write_eof(self) -> None:
        self.eof = True
        if self.closed_at is None:
            self.closed_at = time.monotonic()

    def can_write_eof(self) -> bool:
        return True

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            if self.closed_at is None:
                self.closed_at = time.monotonic()
            if self.protocol is not None:
                self.loop.call_soon(self.protocol.connection_lost, None)

    def abort(self) -> None:
        self.aborted = True
        self.close()

    def is_closing(self) -> bool:
        return self.closed

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def get_write_buffer_size(self) -> int:
        return self.buffered

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 40000), "sockname": ("127.0.0.1", 8080)}.get(
            name, default
        )


@dataclass
class Server:
    """vend's application and protocol factory, as uvicorn would run them."""

    app: VendApp
    config: uvicorn.Config
    limits: ProtocolLimits
    state: ServerState = field(default_factory=ServerState)

    def connect(self, *, hot: bool = True, high_water: int | None = None) -> Connection:
        """A new connection (``hot=False`` turns the hot path off on it)."""
        loop = asyncio.get_running_loop()
        make = protocol_class(self.limits)
        protocol: VendProtocol = make(config=self.config, server_state=self.state, app_state={})
        if not hot:
            protocol.hot = None
        transport = MemoryTransport(loop, high_water)
        transport.protocol = protocol
        protocol.connection_made(transport)
        return Connection(protocol, transport)


async def make_server(
    mounts: list[Path], limits: ProtocolLimits | None = None, **settings: Any
) -> Server:
    """Build and start vend's application on ``mounts`` (probed, as at lifespan startup)."""
    app = create_app(
        Settings(mounts=[{"path": str(m), "sendfile": False} for m in mounts], **settings)
    )
    await app.prepare_mounts()
    config = uvicorn.Config(app, proxy_headers=False, lifespan="off", log_level="warning")
    config.load()
    return Server(
        app, config, limits or ProtocolLimits(request_head_s=1.0, keep_alive_s=1.0, send_s=1.0)
    )


def run_with_server(
    test: Callable[[Server], Awaitable[None]], mounts: list[Path], **settings: Any
) -> None:
    """Run ``test`` with a fresh server on ``mounts``, on a new event loop; the server's
    mounts and access log are closed after it, pass or fail."""

    async def main() -> None:
        server = await make_server(mounts, **settings)
        try:
            await test(server)
        finally:
            for mount in server.app.mounts:
                mount.close()
            server.app.access_log.close()

    asyncio.run(main())


@dataclass
class Connection:
    """One protocol instance and its transport."""

    protocol: VendProtocol
    transport: MemoryTransport

    async def send(
        self, data: bytes, *, byte_by_byte: bool = False, timeout_s: float = 10.0
    ) -> None:
        """Deliver bytes as a transport would: only while reading is on."""
        pieces = [data[i : i + 1] for i in range(len(data))] if byte_by_byte else [data]
        deadline = time.monotonic() + timeout_s
        for piece in pieces:
            while not self.transport.reading:
                if self.transport.closed or time.monotonic() > deadline:
                    return
                await asyncio.sleep(0.001)
            if self.transport.closed or self.transport.eof:
                return
            self.protocol.data_received(piece)
        await asyncio.sleep(0)

    async def wait_closed(self, timeout_s: float = 10.0) -> None:
        """Wait until the server closes or shuts the write side (bounded)."""
        deadline = time.monotonic() + timeout_s
        while not (self.transport.closed or self.transport.eof):
            assert time.monotonic() < deadline, "the server did not close"
            await asyncio.sleep(0.005)

    async def wait_responses(self, methods: list[str], timeout_s: float = 10.0) -> list[Response]:
        """Wait until ``len(methods)`` whole responses were written; return them."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                found = parse_responses(bytes(self.transport.out), methods)
            except AssertionError:
                found = []
            if len(found) == len(methods):
                return found
            assert time.monotonic() < deadline, f"got {bytes(self.transport.out)[:300]!r}"
            await asyncio.sleep(0.005)

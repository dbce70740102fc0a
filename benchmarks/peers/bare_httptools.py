"""Peer: the ceiling. A bare httptools + uvloop protocol answering from a dict in memory.

Every small file of the mounts (the 4 KiB probe and the 2,000 names) is read once at start
and its whole response (status line, headers, body) prebuilt; a request is parsed by
httptools and answered with one ``transport.write`` of the prebuilt bytes, or a prebuilt
404. No ASGI, no task, no thread, no filesystem access, no logging: what vend's own
protocol (same httptools, same uvloop) could do at best on this machine. Keep-alive and
pipelining as HTTP/1.1 (RFC 9112 section 9.3); HTTP/1.0 and ``Connection: close`` close
after the answer.

    python bare_httptools.py --port 8000 --root /m/server1 --root /m/server2 --root /m/server3
"""

from __future__ import annotations

import argparse
import asyncio
import os
from pathlib import Path

import httptools
import uvloop

MAX_BYTES = 256 * 1024
NOT_FOUND = (
    b"HTTP/1.1 404 Not Found\r\nContent-Type: text/plain\r\nContent-Length: 10\r\n\r\nnot found\n"
)


def prebuild(roots: list[Path]) -> dict[bytes, bytes]:
    """Reads every file up to ``MAX_BYTES`` under the roots (first root wins) into responses.

    Args:
        roots: directories in search order.

    Returns:
        request path (bytes, as sent) -> the whole response.
    """
    responses: dict[bytes, bytes] = {}
    for root in roots:
        for directory, _, files in os.walk(root):
            for name in files:
                path = Path(directory, name)
                key = ("/" + path.relative_to(root).as_posix()).encode()
                if key in responses or path.stat().st_size > MAX_BYTES:
                    continue
                body = path.read_bytes()
                head = (
                    "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
                    f"Content-Length: {len(body)}\r\n\r\n"
                ).encode()
                responses[key] = head + body
    return responses


class BareProtocol(asyncio.Protocol):
    """One connection: parse with httptools, answer each request from the dict.

    Args:
        responses: the prebuilt responses.
    """

    def __init__(self, responses: dict[bytes, bytes]) -> None:
        self.responses = responses
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.url = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Keeps the transport."""
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        """Feeds the parser; a malformed request closes the connection."""
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            if self.transport is not None:
                self.transport.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
                self.transport.close()

    def on_url(self, url: bytes) -> None:
        """Collects the request-target (it may come in pieces)."""
        self.url += url

    def on_message_complete(self) -> None:
        """Answers the request that just ended."""
        path = self.url.split(b"?", 1)[0]
        self.url = b""
        if self.transport is None:
            return
        self.transport.write(self.responses.get(path, NOT_FOUND))
        if not self.parser.should_keep_alive():
            self.transport.close()


def main() -> None:
    """Serves until killed."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--root", type=Path, action="append", required=True)
    options = parser.parse_args()
    responses = prebuild(options.root)

    async def serve() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(
            lambda: BareProtocol(responses), "127.0.0.1", options.port, backlog=2048
        )
        async with server:
            await server.serve_forever()

    uvloop.run(serve())


if __name__ == "__main__":
    main()

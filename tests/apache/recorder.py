"""Stand-in backends for what vend cannot be made to do on purpose: one that records the
exact requests Apache sends it, and one that hangs up without answering.

Both listen on a free loopback port (the recorder also on a Unix socket, as vend's
``unix_socket`` does) in a thread and are closed by their fixtures.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from socketserver import ThreadingUnixStreamServer


@dataclass(frozen=True)
class RecordedRequest:
    """One request as the backend received it.

    Attributes:
        request_line: the request line exactly as sent (``GET /x HTTP/1.1``).
        headers: header fields as sent, names lower-cased, in order.
    """

    request_line: str
    headers: list[tuple[str, str]]

    @property
    def target(self) -> str:
        """The request-target of the request line."""
        return self.request_line.split(" ")[1]

    def header(self, name: str) -> list[str]:
        """Return every value of header ``name`` (case-insensitive)."""
        return [v for k, v in self.headers if k == name.lower()]


@dataclass
class Recorder:
    """An HTTP/1.1 backend that answers 200 ``ok`` to everything and records each request.

    Attributes:
        port: its loopback port: 0 (the default) lets the kernel pick a free one when
            ``start`` binds it, and ``start`` sets the port bound.
        unix_socket: listen on this Unix socket instead of the port (mode 0666).
        requests: what it received, in order.
        connections: how many connections it has accepted.
    """

    port: int = 0
    unix_socket: Path | None = None
    requests: list[RecordedRequest] = field(default_factory=list)
    connections: int = 0
    _server: ThreadingHTTPServer | ThreadingUnixStreamServer | None = field(
        default=None, repr=False
    )

    @property
    def address(self) -> str:
        """Its URL as the vhosts' ``VEND_BACKEND`` Defines want it:
        ``http://127.0.0.1:PORT``, or ``unix:PATH|http://localhost``."""
        if self.unix_socket is not None:
            return f"unix:{self.unix_socket}|http://localhost"
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Recorder:
        """Listen and serve in a daemon thread; returns self."""
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self) -> None:
                recorder.connections += 1
                super().setup()

            def do_any(self) -> None:
                headers = [(k.lower(), v) for k, v in self.headers.items()]
                recorder.requests.append(RecordedRequest(self.requestline, headers))
                self.send_response(200)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", "3")
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(b"ok\n")

            do_GET = do_HEAD = do_POST = do_any

            def log_message(self, format: str, *args: object) -> None:
                """Keep the test output quiet."""

        if self.unix_socket is not None:
            self._server = ThreadingUnixStreamServer(str(self.unix_socket), Handler)
            self.unix_socket.chmod(0o666)  # Apache's children run as another user
        else:
            self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
            self.port = int(self._server.server_address[1])
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def close(self) -> None:
        """Stop serving and close the listening socket."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()


class SilentBackend:
    """A backend that reads a request and closes the connection without answering.

    Attributes:
        port: its loopback port (a free one the kernel picked when binding).
    """

    def __init__(self) -> None:
        self._sock = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._sock.getsockname()[1])
        self._sock.settimeout(0.2)
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    @property
    def address(self) -> str:
        """``http://127.0.0.1:PORT``, as the vhosts' ``VEND_BACKEND`` Defines want it."""
        return f"http://127.0.0.1:{self.port}"

    def _serve(self) -> None:
        while not self._closed.is_set():
            try:
                conn, _ = self._sock.accept()
            except OSError:
                continue
            with conn:
                conn.settimeout(2)
                with contextlib.suppress(OSError):
                    conn.recv(65536)

    def close(self) -> None:
        """Stop accepting and close the listening socket."""
        self._closed.set()
        self._thread.join(timeout=5)
        self._sock.close()

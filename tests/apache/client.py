"""Clients that reach the test Apache the way a browser reaches the legacy host.

The legacy hostname never resolves here: every client connects to a loopback address and
still sends the legacy name in SNI and ``Host``, and validates the certificate against it
(``curl --resolve``, or httpx with ``PinnedTransport``). Hostile request-targets go out as
raw bytes through ``raw_request``, since ordinary clients tidy ``..`` and ``#`` away.
"""

from __future__ import annotations

import http.client
import socket
import ssl
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import httpx

LEGACY_NAME: Final = "legacy.example.org"
ALIAS_NAME: Final = "www.legacy.example.org"


class PinnedTransport(httpx.HTTPTransport):
    """An httpx transport that connects to one loopback address whatever the URL's host.

    TLS still sends the URL's host as SNI and checks the certificate against it, and the
    ``Host`` header keeps it, as ``curl --resolve`` does.

    Args:
        address: the IP address to connect to.
        **kwargs: passed to ``httpx.HTTPTransport`` (``verify``, ``local_address``, ...).
    """

    def __init__(self, *, address: str = "127.0.0.1", **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self._address = address

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        """Send ``request`` to the pinned address, with SNI for the URL's host."""
        request.extensions = {**request.extensions, "sni_hostname": request.url.host}
        request.url = request.url.copy_with(host=self._address)
        return super().handle_request(request)


def tls_context(ca_pem: Path | None) -> ssl.SSLContext:
    """Return a client TLS context that trusts only ``ca_pem`` (or nothing at all if None)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if ca_pem is not None:
        context.load_verify_locations(cafile=str(ca_pem))
    return context


def front_client(
    ca_pem: Path, *, source_address: str | None = None, timeout_s: float = 30.0
) -> httpx.Client:
    """Return an httpx client for ``https://legacy.example.org:PORT/`` URLs pinned to 127.0.0.1.

    Args:
        ca_pem: the only CA the client trusts.
        source_address: the loopback address to connect from (Apache then sees it).
        timeout_s: httpx's timeout in seconds.
    """
    transport = PinnedTransport(verify=tls_context(ca_pem), local_address=source_address)
    return httpx.Client(transport=transport, timeout=timeout_s)


@dataclass(frozen=True)
class RawResponse:
    """A response read off a socket.

    Attributes:
        status: the status code.
        headers: header fields as received (names lower-cased), in order.
        body: the body bytes (de-chunked; empty for HEAD).
    """

    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        """Return the first value of header ``name`` (case-insensitive), or None."""
        wanted = name.lower()
        return next((v for k, v in self.headers if k == wanted), None)


def raw_request(
    port: int,
    request: bytes,
    *,
    ca_pem: Path | None,
    server_name: str = LEGACY_NAME,
    head: bool = False,
    source_address: str | None = None,
    timeout_s: float = 10.0,
) -> RawResponse:
    """Send ``request`` byte-for-byte to ``127.0.0.1:port`` and read one response.

    Args:
        port: the TCP port.
        request: the whole request (request line, header fields, blank line).
        ca_pem: speak TLS with SNI ``server_name``, trusting only this CA; plain TCP if None.
        server_name: the SNI name, checked against the certificate.
        head: the request is HEAD (the response has no body to read).
        source_address: the loopback address to connect from.
        timeout_s: the socket timeout in seconds.

    Returns:
        The response.

    Raises:
        OSError: connecting, the TLS handshake or the read failed.
        http.client.HTTPException: the answer was not an HTTP response.
    """
    source = (source_address, 0) if source_address else None
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout_s, source_address=source)
    try:
        if ca_pem is not None:
            sock = tls_context(ca_pem).wrap_socket(sock, server_hostname=server_name)
        sock.sendall(request)
        response = http.client.HTTPResponse(sock, method="HEAD" if head else "GET")
        response.begin()
        body = response.read()
        headers = [(k.lower(), v) for k, v in response.getheaders()]
        return RawResponse(status=response.status, headers=headers, body=body)
    finally:
        sock.close()


def get_request(target: str | bytes, *, host: str = LEGACY_NAME, method: str = "GET") -> bytes:
    """Build a one-shot HTTP/1.1 request for a raw request-target (sent exactly as given)."""
    raw = target if isinstance(target, bytes) else target.encode("utf-8")
    return (
        method.encode()
        + b" "
        + raw
        + b" HTTP/1.1\r\nHost: "
        + host.encode()
        + b"\r\nUser-Agent: vend-apache-tests\r\nConnection: close\r\n\r\n"
    )


def curl(
    *args: str, port: int, ca_pem: Path | None, name: str = LEGACY_NAME, timeout_s: float = 60.0
) -> subprocess.CompletedProcess[bytes]:
    """Run curl with ``name:port`` resolved to 127.0.0.1 (``--resolve``), as a browser would
    reach the legacy host.

    Args:
        *args: further curl arguments (URLs included).
        port: the port that ``name`` is pinned to.
        ca_pem: the only CA curl trusts; None leaves curl's default (the system's CAs).
        name: the hostname to pin.
        timeout_s: seconds before curl is killed.

    Returns:
        The finished process (``returncode`` is curl's exit code; 60 means the peer's
        certificate failed validation).
    """
    command = ["curl", "--silent", "--show-error", "--resolve", f"{name}:{port}:127.0.0.1"]
    if ca_pem is not None:
        command += ["--cacert", str(ca_pem)]
    return subprocess.run([*command, *args], capture_output=True, timeout=timeout_s, check=False)

"""``vend verify --url``: the old links requested from a running front, with httpx.

Each link is requested as the old server received it: the request-target is sent
byte for byte (httpcore's ``target`` extension; httpx would otherwise tidy ``..`` away),
with ``HEAD`` or a one-byte ``GET`` (``Range: bytes=0-0``). A redirect (301, 302, 307,
308) is followed once: served there means ``redirected``.

``--connect-to HOST:PORT`` reaches the new front before DNS points at it, as curl's
``--connect-to`` does: every TCP connection goes to HOST:PORT while the URL's host stays
in the ``Host`` header, the TLS server name (SNI) and the certificate check (against
``--ca-file`` when given). It is a network backend under httpx's connection pool, so
nothing else about the request changes.

Which mount served and which rule refused are not visible from outside (no response
header names a mount); the outcome comes from the status code alone.
"""

from __future__ import annotations

import ssl
from collections.abc import Iterable
from email.utils import parsedate_to_datetime
from typing import Any, Final

import httpcore
import httpx

from app.ops.sources import OldLinks
from app.ops.verify import Listed, Outcome, Sink, Verdict, check_all, compare_listing

TIMEOUT_S: Final = 30.0
"""Time allowed for each request (connect, each read), seconds."""
_WORKS: Final = frozenset({200, 206, 304})
_REDIRECTS: Final = frozenset({301, 302, 307, 308})


class ConnectTo(httpcore.AsyncNetworkBackend):
    """A network backend that connects every TCP connection to one fixed address.

    Args:
        host: the address to connect to (name or IP; IPv6 without brackets).
        port: its TCP port.
    """

    def __init__(self, host: str, port: int) -> None:
        self._host = host
        self._port = port
        self._backend = httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        """Connect to the fixed address, whatever ``host`` and ``port`` the URL named."""
        return await self._backend.connect_tcp(
            self._host, self._port, timeout, local_address, socket_options
        )

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        """Unix sockets are not redirected."""
        return await self._backend.connect_unix_socket(path, timeout, socket_options)

    async def sleep(self, seconds: float) -> None:
        """Sleep, as the wrapped backend does."""
        await self._backend.sleep(seconds)


def parse_connect_to(value: str) -> tuple[str, int]:
    """Split ``HOST:PORT`` (``[::1]:8443`` for IPv6).

    Raises:
        ValueError: not HOST:PORT with a port from 1 to 65535.
    """
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"--connect-to {value!r}: expected HOST:PORT")
    return host.removeprefix("[").removesuffix("]"), int(port)


def make_client(
    base_url: str, *, ca_file: str | None, connect_to: str | None, jobs: int
) -> httpx.AsyncClient:
    """An httpx client for the front, trusting ``ca_file`` and connecting to ``connect_to``.

    Raises:
        ValueError: ``connect_to`` is malformed.
        OSError, ssl.SSLError: ``ca_file`` cannot be read.
    """
    context = (
        ssl.create_default_context(cafile=ca_file) if ca_file else ssl.create_default_context()
    )
    limits = httpx.Limits(max_connections=jobs, max_keepalive_connections=jobs)
    transport = httpx.AsyncHTTPTransport(verify=context, limits=limits)
    if connect_to is not None:
        host, port = parse_connect_to(connect_to)
        # httpx's transport takes no network backend; its pool (httpcore) does.
        transport._pool = httpcore.AsyncConnectionPool(
            ssl_context=context,
            max_connections=jobs,
            max_keepalive_connections=jobs,
            network_backend=ConnectTo(host, port),
        )
    return httpx.AsyncClient(
        base_url=base_url, transport=transport, timeout=TIMEOUT_S, follow_redirects=False
    )


def _listing_of(response: httpx.Response) -> tuple[int, int] | None:
    """Size and mtime (whole seconds) of a served response, where its headers say."""
    length: str | None = response.headers.get("content-length")
    content_range: str | None = response.headers.get("content-range")
    if content_range and "/" in content_range:
        length = content_range.rsplit("/", 1)[1]
    modified = response.headers.get("last-modified")
    if not length or not length.isdigit() or not modified:
        return None
    try:
        return int(length), int(parsedate_to_datetime(modified).timestamp())
    except (TypeError, ValueError):
        return None


class OnlineChecker:
    """Requests links from a front and turns the answers into verdicts.

    Args:
        client: the httpx client (its base URL is the legacy site's).
        method: ``"head"`` or ``"range"`` (``GET`` with ``Range: bytes=0-0``).
    """

    def __init__(self, client: httpx.AsyncClient, method: str = "head") -> None:
        self._client = client
        self._method = method

    async def _request(self, target: bytes) -> httpx.Response:
        method, headers = (
            ("HEAD", {}) if self._method == "head" else ("GET", {"range": "bytes=0-0"})
        )
        url = self._client.base_url.copy_with(raw_path=b"/")
        return await self._client.request(
            method, url, headers=headers, extensions={"target": target}
        )

    async def check(self, target: bytes, listed: Listed = None, *, hops: int = 1) -> Verdict:
        """Request one link (following one redirect) and judge the answer.

        Args:
            target: the raw request-target without query.
            listed: the old server's size and mtime, or None.
            hops: redirects still followed.

        Returns:
            The verdict; ``detail`` carries the status or the connection error.
        """
        try:
            response = await self._request(target)
        except httpx.LocalProtocolError:
            # Not sendable as HTTP/1.1 (raw non-ASCII bytes, spaces): vend's parser
            # would refuse it with 400 as well.
            return Verdict(Outcome.REFUSED, detail="not a valid request-target")
        except httpx.HTTPError as exc:
            return Verdict(Outcome.UNAVAILABLE, detail=type(exc).__name__)
        status = response.status_code
        if status in _WORKS or (status == 416 and self._method == "range"):
            known = _listing_of(response)
            differs = compare_listing(*known, listed) if known else None
            return Verdict(Outcome.DIFFERS if differs else Outcome.SERVED, detail=differs)
        location = response.headers.get("location", "")
        if status in _REDIRECTS and location and hops > 0:
            new_target = httpx.URL(location)
            if new_target.is_relative_url or new_target.host == self._client.base_url.host:
                after = await self.check(new_target.raw_path.split(b"?")[0], hops=hops - 1)
                if after.outcome.works:
                    return Verdict(Outcome.REDIRECTED, detail=location)
                return after
        if status in (400, 414, 431):
            return Verdict(Outcome.REFUSED, detail=f"HTTP {status}")
        if status in (401, 403):
            return Verdict(Outcome.FORBIDDEN, detail=f"HTTP {status}")
        if status >= 500:
            return Verdict(Outcome.UNAVAILABLE, detail=f"HTTP {status}")
        return Verdict(Outcome.NOT_FOUND, detail=f"HTTP {status}")


async def verify_online(
    base_url: str,
    links: OldLinks,
    sink: Sink,
    *,
    jobs: int,
    ca_file: str | None = None,
    connect_to: str | None = None,
    method: str = "head",
) -> None:
    """Request every link from the front at ``base_url``.

    Args:
        base_url: the legacy site, ``https://legacy.example.org``.
        links: the distinct old links.
        sink: receives each link, its hits and its verdict.
        jobs: requests at once.
        ca_file: PEM file of the CA to trust instead of the system's, or None.
        connect_to: ``HOST:PORT`` to connect to instead of the URL's host, or None.
        method: ``"head"`` or ``"range"``.

    Raises:
        ValueError: ``connect_to`` is malformed.
        OSError, ssl.SSLError: ``ca_file`` cannot be used.
    """
    async with make_client(base_url, ca_file=ca_file, connect_to=connect_to, jobs=jobs) as client:
        checker = OnlineChecker(client, method)
        await check_all(links.hits.items(), links.listed, checker.check, sink, jobs=jobs)

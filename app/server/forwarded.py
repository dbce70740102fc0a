"""Which peers may say who the client is: X-Forwarded-For and X-Forwarded-Proto.

The rule, for every request on either listener:

- a TCP peer is trusted when its address is in ``trusted_proxies`` (an address or a
  network), or when ``trusted_proxies`` holds ``*``;
- a peer on vend's own Unix socket has no address; it is trusted when ``trusted_proxies``
  holds ``unix`` (the default does), or ``*``. Only processes that may open the socket
  file (mode 0660: vend's user and group) can be such a peer.

From a trusted peer, the client is the rightmost X-Forwarded-For entry that is not itself
a trusted address (every proxy appends the address it saw), or the leftmost entry when all
are trusted; X-Forwarded-Proto ``http`` or ``https`` becomes the request's scheme. From
any other peer both fields are ignored and the client is the peer itself (none for an
untrusted Unix-socket peer, logged as ``-``). This is what uvicorn's proxy-headers
middleware does for TCP peers, plus the Unix-socket rule it lacks.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Iterable
from typing import Final

from app.settings import UNIX_PEER
from app.types import ASGIApp, Receive, Scope, Send

Client = tuple[str, int]
_IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
_SCHEMES: Final = frozenset({"http", "https"})
MAX_JUDGED: Final = 1024
"""Most addresses whose trust is remembered (least recently asked first out)."""


def _split_host_port(entry: str) -> Client:
    """One X-Forwarded-For entry as (host, port): ``1.2.3.4``, ``1.2.3.4:80``, ``[::1]:80``."""
    if entry.startswith("[") and "]" in entry:
        host, _, rest = entry[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
        return host, int(port) if port.isdigit() else 0
    if entry.count(":") == 1:
        host, _, port = entry.partition(":")
        return host, int(port) if port.isdigit() else 0
    return entry, 0


class ProxyTrust:
    """The ``trusted_proxies`` setting, compiled once.

    Args:
        entries: addresses and networks (``127.0.0.1``, ``10.0.0.0/8``), ``unix`` for a
            peer on vend's Unix socket, or ``*`` for every peer; validated by settings.
        unix_listener: whether vend listens on a Unix socket. Only then does a peer
            without an address count as a Unix-socket peer; on a TCP listener (where a
            peer whose address cannot be read also has none) it is never trusted.
    """

    def __init__(self, entries: Iterable[str], *, unix_listener: bool = False) -> None:
        entries = list(entries)
        self.trusts_all = "*" in entries
        self.trusts_unix_peer = unix_listener and (self.trusts_all or UNIX_PEER in entries)
        self._networks: list[_IpNetwork] = [
            ipaddress.ip_network(entry, strict=False)
            for entry in entries
            if entry not in ("*", UNIX_PEER)
        ]
        # Parsing an address costs microseconds and the same few peers ask every time.
        self._judged = functools.lru_cache(maxsize=MAX_JUDGED)(self._judge)

    @property
    def enabled(self) -> bool:
        """Whether any peer at all is trusted."""
        return self.trusts_all or self.trusts_unix_peer or bool(self._networks)

    def trusts_address(self, host: str) -> bool:
        """Whether an IP address (a TCP peer, or an X-Forwarded-For entry) is trusted.

        Args:
            host: the address as text; anything that is not an IP address is untrusted.

        Returns:
            True for an address inside a trusted network (always with ``*``).
        """
        return self.trusts_all or self._judged(host)

    def _judge(self, host: str) -> bool:
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return False
        return any(address in network for network in self._networks)

    def trusts_peer(self, peer: Client | None) -> bool:
        """Whether the connection's peer may set X-Forwarded-For.

        Args:
            peer: the peer's (address, port), or None for a peer on a Unix socket.

        Returns:
            True when the rule in this module's docstring trusts it.
        """
        if peer is None:
            return self.trusts_unix_peer
        return self.trusts_address(peer[0])

    def client(self, forwarded_for: list[bytes]) -> Client | None:
        """The client named by a trusted peer's X-Forwarded-For fields.

        Args:
            forwarded_for: every X-Forwarded-For field value, in the order received.

        Returns:
            (address, port) with port 0 when none was given, or None when the fields
            name nobody.
        """
        joined = b",".join(forwarded_for).decode("latin-1")
        entries = [entry.strip() for entry in joined.split(",") if entry.strip()]
        if not entries:
            return None
        if not self.trusts_all:
            for entry in reversed(entries):
                host, port = _split_host_port(entry)
                if not self.trusts_address(host):
                    return host, port
        return _split_host_port(entries[0])


class ForwardedHeaders:
    """ASGI middleware applying ``ProxyTrust`` to each HTTP request's scope.

    Sets ``scope["client"]`` and ``scope["scheme"]`` from a trusted peer's
    X-Forwarded-For and X-Forwarded-Proto; leaves every other scope untouched.

    Args:
        app: the application.
        trust: the compiled ``trusted_proxies``.
    """

    def __init__(self, app: ASGIApp, trust: ProxyTrust) -> None:
        self.app = app
        self.trust = trust

    def __getattr__(self, name: str) -> object:
        """The wrapped application's attributes (``reload``, ``settings``), unchanged."""
        return getattr(self.app, name)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Apply the rule to an HTTP scope, then call the application.

        Args:
            scope: the ASGI scope.
            receive: the ASGI receive callable.
            send: the ASGI send callable.
        """
        if scope["type"] == "http" and self.trust.trusts_peer(scope.get("client")):
            forwarded_for = []
            for name, value in scope["headers"]:
                if name == b"x-forwarded-for":
                    forwarded_for.append(value)
                elif name == b"x-forwarded-proto":
                    proto = value.decode("latin-1").strip().lower()
                    if proto in _SCHEMES:
                        scope["scheme"] = proto
            if forwarded_for and (client := self.trust.client(forwarded_for)) is not None:
                scope["client"] = client
        await self.app(scope, receive, send)

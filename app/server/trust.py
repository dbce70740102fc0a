"""What the protocol takes from uvicorn's configuration: vend's app and proxy trust.

uvicorn hands the protocol ``config.loaded_app``: vend's ``VendApp`` inside vend's
``ForwardedHeaders`` middleware (``app.server.forwarded``), which applies the
``trusted_proxies`` rule to each ASGI request. The hot path answers without running
that middleware, so it finds the client address with the middleware's own
``ProxyTrust``: the access log shows the same address on both paths, by the same rule.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

from uvicorn.config import Config

from app.asgi import VendApp
from app.server.forwarded import ForwardedHeaders, ProxyTrust

MAX_WRAPPERS: Final = 8
"""Most middleware layers looked through for vend's application."""

ClientFinder = Callable[[tuple[str, int] | None, list[tuple[bytes, bytes]]], Any]


def find_vend_app(app: Any) -> VendApp | None:
    """vend's application inside uvicorn's middleware, or None (another application).

    Args:
        app: ``config.loaded_app``.

    Returns:
        The ``VendApp``, found through each middleware's ``app`` attribute.
    """
    for _ in range(MAX_WRAPPERS):
        if isinstance(app, VendApp):
            return app
        app = getattr(app, "app", None)
        if app is None:
            return None
    return None


def trusted_client_finder(config: Config) -> ClientFinder | None:
    """A function giving a request's client address as the ASGI path sees it.

    Args:
        config: uvicorn's configuration; its ``loaded_app`` holds vend's
            ``ForwardedHeaders`` middleware when vend runs it (``app.server.serve``).

    Returns:
        ``(peer, headers) -> (host, port) | None``: the address after trusted
        X-Forwarded-For, by the same ``ProxyTrust`` rule the middleware applies
        (``app.server.forwarded``); or None when no peer is trusted (the peer is the
        client).
    """
    trust = _find_trust(config.loaded_app)
    if trust is None or not trust.enabled:
        return None

    def client(
        peer: tuple[str, int] | None, headers: list[tuple[bytes, bytes]]
    ) -> tuple[str, int] | None:
        if not trust.trusts_peer(peer):
            return peer
        forwarded_for = [value for name, value in headers if name == b"x-forwarded-for"]
        if not forwarded_for:
            return peer
        named = trust.client(forwarded_for)
        return peer if named is None else named

    return client


def _find_trust(app: Any) -> ProxyTrust | None:
    """The ``ProxyTrust`` of vend's ``ForwardedHeaders`` among the middleware, if any."""
    for _ in range(MAX_WRAPPERS):
        if isinstance(app, ForwardedHeaders):
            return app.trust
        app = getattr(app, "app", None)
        if app is None:
            return None
    return None

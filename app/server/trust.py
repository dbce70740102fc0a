"""What the protocol takes from uvicorn's configuration: vend's app and proxy trust.

uvicorn hands the protocol ``config.loaded_app``: vend's ``VendApp``, wrapped in
uvicorn's ``ProxyHeadersMiddleware`` when X-Forwarded-For is trusted
(``trusted_proxies``). The hot path answers without running that middleware, so it finds
the client address with a ``ProxyHeadersMiddleware`` of its own, built from the same
public settings (``config.proxy_headers``, ``config.forwarded_allow_ips``): the access log
shows the same address on both paths, by the same code.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

from uvicorn.config import Config
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from app.asgi import VendApp

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


async def _keep_scope(scope: Any, receive: Any, send: Any) -> None:
    """The innermost application of the address finder: the scope says it all."""


def trusted_client_finder(config: Config) -> ClientFinder | None:
    """A function giving a request's client address as the ASGI path sees it.

    Args:
        config: uvicorn's configuration.

    Returns:
        ``(peer, headers) -> (host, port)``, the address after trusted
        X-Forwarded-For, or None when proxy headers are not trusted (the peer is the
        client).
    """
    if not config.proxy_headers:
        return None
    middleware = ProxyHeadersMiddleware(_keep_scope, trusted_hosts=config.forwarded_allow_ips)

    def client(
        peer: tuple[str, int] | None, headers: list[tuple[bytes, bytes]]
    ) -> tuple[str, int] | None:
        for name, _ in headers:
            if name == b"x-forwarded-for":
                break
        else:  # nothing the middleware would change the address with
            return peer
        scope: dict[str, Any] = {"type": "http", "client": peer, "headers": headers}
        step = middleware(scope, _keep_scope, _keep_scope)  # type: ignore[arg-type]
        try:
            step.send(None)  # nothing in it awaits: it completes in this one step
        except StopIteration:
            pass
        else:  # pragma: no cover - a middleware that suspends
            step.close()
        result: tuple[str, int] | None = scope["client"]
        return result

    return client

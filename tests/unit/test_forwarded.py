"""The X-Forwarded-For trust rule of app.server.forwarded, TCP and Unix-socket peers."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from app.server.forwarded import ForwardedHeaders, ProxyTrust
from app.settings_load import load_settings


def test_default_trusts_loopback_and_the_unix_socket_peer() -> None:
    """The default trusted_proxies holds loopback and "unix"; a Unix peer counts only there."""
    entries = load_settings().trusted_proxies
    assert entries == ["127.0.0.1", "::1", "unix"]
    on_unix, on_tcp = ProxyTrust(entries, unix_listener=True), ProxyTrust(entries)
    assert on_unix.trusts_peer(None) and not on_tcp.trusts_peer(None)
    assert on_tcp.trusts_peer(("127.0.0.1", 5000)) and on_tcp.trusts_peer(("::1", 5000))
    assert not on_tcp.trusts_peer(("192.0.2.1", 5000))


def test_unix_peer_untrusted_without_the_unix_entry() -> None:
    """Without "unix" (or "*") a peer on vend's Unix socket is not trusted; "*" trusts all."""
    assert not ProxyTrust(["127.0.0.1"], unix_listener=True).trusts_peer(None)
    assert not ProxyTrust([], unix_listener=True).enabled
    assert ProxyTrust(["*"], unix_listener=True).trusts_peer(None)
    assert ProxyTrust(["10.0.0.0/8"]).trusts_peer(("10.2.3.4", 1))


@pytest.mark.parametrize(
    ("fields", "client"),
    [
        ([b"203.0.113.9"], ("203.0.113.9", 0)),
        ([b"198.51.100.1, 203.0.113.9"], ("203.0.113.9", 0)),
        ([b"203.0.113.9", b"127.0.0.1"], ("203.0.113.9", 0)),
        ([b"203.0.113.9:4711"], ("203.0.113.9", 4711)),
        ([b"[2001:db8::1]:80"], ("2001:db8::1", 80)),
        ([b"127.0.0.1, ::1"], ("127.0.0.1", 0)),
        ([b" , "], None),
    ],
)
def test_client_is_the_rightmost_untrusted_entry(
    fields: list[bytes], client: tuple[str, int] | None
) -> None:
    """Each proxy appends what it saw: the client is the last entry that is not a proxy."""
    assert ProxyTrust(["127.0.0.1", "::1"]).client(fields) == client


def _scope_after(trust: ProxyTrust, peer: tuple[str, int] | None) -> dict[str, Any]:
    """The scope the application sees for one request with forwarded fields from ``peer``."""
    seen: dict[str, Any] = {}

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.update(scope)

    scope = {
        "type": "http",
        "scheme": "http",
        "client": peer,
        "headers": [(b"x-forwarded-for", b"203.0.113.9"), (b"x-forwarded-proto", b"https")],
    }
    asyncio.run(ForwardedHeaders(app, trust)(scope, None, None))  # type: ignore[arg-type]
    return seen


def test_middleware_applies_the_rule_to_the_scope() -> None:
    """A trusted peer's fields set client and scheme; an untrusted peer's are ignored."""
    unix = ProxyTrust(["unix"], unix_listener=True)
    assert _scope_after(unix, None)["client"] == ("203.0.113.9", 0)
    assert _scope_after(unix, None)["scheme"] == "https"
    wary = ProxyTrust(["127.0.0.1"], unix_listener=True)
    assert _scope_after(wary, None)["client"] is None
    assert _scope_after(wary, ("192.0.2.7", 9))["client"] == ("192.0.2.7", 9)
    assert _scope_after(wary, ("192.0.2.7", 9))["scheme"] == "http"

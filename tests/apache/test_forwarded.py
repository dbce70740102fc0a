"""vend logs the real client's address: X-Forwarded-For is believed only when the
connection comes from one of vend's trusted_proxies (Apache here)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable

import pytest

from .backend import Vend
from .client import LEGACY_NAME, raw_request
from .conftest import Front, Pki, StartApache, StartVend

pytestmark = pytest.mark.apache

CLIENT_ADDRESS = "127.0.0.5"
SPOOFED = "203.0.113.9"


def _request(marker: str, *, forwarded_for: str | None = None) -> bytes:
    """A GET whose User-Agent carries ``marker``, to find its access-log lines."""
    extra = f"X-Forwarded-For: {forwarded_for}\r\n" if forwarded_for else ""
    return (
        f"GET /index.html HTTP/1.1\r\nHost: {LEGACY_NAME}\r\nUser-Agent: {marker}\r\n"
        f"{extra}Connection: close\r\n\r\n"
    ).encode()


def _logged_client(read_log: Callable[[], str], marker: str, *, timeout_s: float = 10.0) -> str:
    """Return the client address (first field) of the access-log line holding ``marker``;
    logs are written after the response, so this waits up to ``timeout_s`` seconds."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        lines = [line for line in read_log().splitlines() if marker in line]
        if lines:
            assert len(lines) == 1, lines
            return lines[0].split(" ", 1)[0]
        time.sleep(0.02)
    raise AssertionError(f"no access-log line for {marker}")


def _vend_log(vend: Vend) -> Callable[[], str]:
    """A reader of vend's access log."""
    return lambda: "\n".join(vend.access_lines())


@pytest.mark.parametrize("spoofed", [None, SPOOFED], ids=["plain", "spoofed-xff"])
def test_through_apache_vend_logs_the_client(front: Front, spoofed: str | None) -> None:
    """Through Apache (a trusted proxy), vend logs the connecting client's address, not
    Apache's, and not an X-Forwarded-For value the client made up."""
    marker = f"xff-{uuid.uuid4().hex}"
    response = raw_request(
        front.apache.https_port,
        _request(marker, forwarded_for=spoofed),
        ca_pem=front.pki.ca_pem,
        source_address=CLIENT_ADDRESS,
    )
    assert response.status == 200
    assert _logged_client(_vend_log(front.vend), marker) == CLIENT_ADDRESS
    assert _logged_client(lambda: front.apache.access_log, marker) == CLIENT_ADDRESS


def test_direct_client_cannot_forge_its_address(front: Front) -> None:
    """A client that reaches vend directly from an untrusted address is logged as itself,
    whatever X-Forwarded-For it sends."""
    marker = f"xff-{uuid.uuid4().hex}"
    response = raw_request(
        front.vend.port,
        _request(marker, forwarded_for=SPOOFED),
        ca_pem=None,
        source_address=CLIENT_ADDRESS,
    )
    assert response.status == 200
    assert _logged_client(_vend_log(front.vend), marker) == CLIENT_ADDRESS


def test_untrusted_proxy_is_logged_as_itself(
    vend_factory: StartVend, apache_factory: StartApache, pki: Pki
) -> None:
    """With trusted_proxies empty, vend ignores Apache's X-Forwarded-For and logs Apache's
    own address (so the setting, not luck, decides)."""
    vend = vend_factory(trusted_proxies=[])
    apache = apache_factory(vend.address)
    marker = f"xff-{uuid.uuid4().hex}"
    response = raw_request(
        apache.https_port, _request(marker), ca_pem=pki.ca_pem, source_address=CLIENT_ADDRESS
    )
    assert response.status == 200
    assert _logged_client(_vend_log(vend), marker) == "127.0.0.1"

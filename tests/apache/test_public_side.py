"""What the public sees besides content: the port-80 redirect, ACME challenges answered by
Apache itself, and vend's operator endpoints kept from it."""

from __future__ import annotations

import json

import pytest

from .client import LEGACY_NAME, get_request, raw_request
from .conftest import MONITORING_ADDRESS, Content, Front

pytestmark = pytest.mark.apache


@pytest.mark.parametrize(
    "target",
    [
        "/path?q=1",
        "/css/site.css",
        "/docs/manual.pdf?v=20090101&lang=en",
        "/a%20b/c+d.html?x=%2F&y=%26",
        "/",
        "/.well-known/vend/health",
    ],
)
def test_http_redirects_to_https_keeping_path_and_query(front: Front, target: str) -> None:
    """Plain HTTP on the legacy name answers 301 to the same path and query on https://,
    from Apache alone."""
    seen = len(front.vend.access_lines())
    response = raw_request(front.apache.http_port, get_request(target), ca_pem=None)
    assert response.status == 301
    assert response.header("location") == f"https://{LEGACY_NAME}{target}"
    assert _new_vend_lines(front, seen) == []


def _new_vend_lines(front: Front, seen: int) -> list[str]:
    """Return vend's access-log lines after the first ``seen``."""
    return front.vend.access_lines()[seen:]


@pytest.mark.parametrize("port_name", ["http_port", "https_port"])
def test_acme_challenge_is_served_by_apache(front: Front, content: Content, port_name: str) -> None:
    """An ACME HTTP-01 challenge file is answered by Apache from the webroot on both ports,
    as text/plain, without reaching vend; a missing token is Apache's 404."""
    port = getattr(front.apache, port_name)
    ca_pem = front.pki.ca_pem if port_name == "https_port" else None
    seen = len(front.vend.access_lines())
    path = f"/.well-known/acme-challenge/{content.acme_token}"
    response = raw_request(port, get_request(path), ca_pem=ca_pem)
    assert response.status == 200
    assert response.body == content.acme_body
    assert response.header("content-type") == "text/plain"
    missing = raw_request(port, get_request("/.well-known/acme-challenge/nope"), ca_pem=ca_pem)
    assert missing.status == 404
    assert _new_vend_lines(front, seen) == []


@pytest.mark.parametrize(
    "target",
    [
        "/.well-known/vend/health",
        "/.well-known/vend/metrics",
        "/.well-known/vend/misses",
        "/.well-known/vend/misses?format=json",
        "/.well-known/vend/%6Disses",
        "/.well-known/vend",
        "/.well-known/vend/",
        "//.well-known/vend/health",
        "/.well-known//vend/health",
        "/.well-known/%76end/health",
        "/%2Ewell-known/vend/health",
        "/.well-known/vend/./health",
        "/.well-known/vend/x/../health",
        "/.well-known/vend/health?format=json",
        "/.well-known/vend/health;x",
        "/.WELL-KNOWN/vend/health",
        "/.well-known/VEND/health",
    ],
)
def test_operator_endpoints_not_reachable_publicly(front: Front, target: str) -> None:
    """No spelling of vend's health, metrics or misses path gets an answer from vend to a
    public client: Apache refuses it (403), or vend does not know the spelling (4xx)."""
    response = raw_request(front.apache.https_port, get_request(target), ca_pem=front.pki.ca_pem)
    assert 400 <= response.status < 500, (response.status, response.body[:200])
    assert b'"mounts"' not in response.body
    assert b'"misses"' not in response.body
    assert b"vend_" not in response.body  # Prometheus metric names


def test_operator_endpoints_reachable_from_monitoring(front: Front) -> None:
    """From an address in VEND_MONITORING, the health and misses endpoints answer through
    Apache."""
    response = raw_request(
        front.apache.https_port,
        get_request("/.well-known/vend/health"),
        ca_pem=front.pki.ca_pem,
        source_address=MONITORING_ADDRESS,
    )
    assert response.status == 200
    assert json.loads(response.body)["status"] == "ok"
    misses = raw_request(
        front.apache.https_port,
        get_request("/.well-known/vend/misses"),
        ca_pem=front.pki.ca_pem,
        source_address=MONITORING_ADDRESS,
    )
    assert misses.status == 200
    assert "misses" in json.loads(misses.body)

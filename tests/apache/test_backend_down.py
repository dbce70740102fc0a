"""When vend is down or broken, Apache answers with its own 503/502 pages that say nothing
about the backend; when vend comes back, Apache uses it again within seconds."""

from __future__ import annotations

import time

import pytest

from .backend import Vend
from .client import get_request, raw_request
from .conftest import Content, Pki, StartApache, StartVend
from .recorder import SilentBackend

pytestmark = pytest.mark.apache

# Nothing in an error page may point at the backend or the software behind Apache.
REVEALING = (
    b"127.0.0.1",
    b"localhost",
    b"uvicorn",
    b"starlette",
    b"python",
    b"vend",
    b"proxy",
    b"refused",
    b"backend",
    b"remote server",
    b"upstream",
)


def _assert_reveals_nothing(body: bytes, headers: list[tuple[str, str]], vend_port: int) -> None:
    """Assert the error response names no backend address, port or software."""
    lowered = body.lower()
    for word in (*REVEALING, str(vend_port).encode()):
        assert word not in lowered, (word, body)
    for name, value in headers:
        assert str(vend_port) not in value, (name, value)
        assert "uvicorn" not in value.lower(), (name, value)


def test_vend_down_503_then_back_within_seconds(
    vend_factory: StartVend, apache_factory: StartApache, pki: Pki, content: Content
) -> None:
    """With vend stopped Apache answers 503 from its own page, naming no backend; once vend
    listens again on the same port, requests succeed within 3 s, Apache untouched."""
    vend: Vend = vend_factory()
    apache = apache_factory(vend.address)
    request = get_request("/index.html")
    assert raw_request(apache.https_port, request, ca_pem=pki.ca_pem).status == 200

    vend.stop()
    for _ in range(3):
        down = raw_request(apache.https_port, request, ca_pem=pki.ca_pem)
        assert down.status == 503
        _assert_reveals_nothing(down.body, down.headers, vend.port)
        assert b"temporarily unavailable" in down.body

    apache_pid = apache.process.pid
    vend_factory(port=vend.port)
    restarted = time.monotonic()
    status = 0
    while time.monotonic() - restarted < 3.0 and status != 200:
        status = raw_request(apache.https_port, request, ca_pem=pki.ca_pem).status
        time.sleep(0.05)
    assert status == 200, f"not served {time.monotonic() - restarted:.1f} s after vend returned"
    ok = raw_request(apache.https_port, request, ca_pem=pki.ca_pem)
    assert ok.body == content.file("index.html")
    assert apache.process.poll() is None and apache.process.pid == apache_pid


def test_broken_backend_502_reveals_nothing(apache_factory: StartApache, pki: Pki) -> None:
    """A backend that hangs up without answering gets Apache's own 502 page, which names no
    backend."""
    silent = SilentBackend()
    try:
        apache = apache_factory(silent.address)
        response = raw_request(apache.https_port, get_request("/index.html"), ca_pem=pki.ca_pem)
    finally:
        silent.close()
    assert response.status == 502
    _assert_reveals_nothing(response.body, response.headers, silent.port)
    assert b"Bad Gateway" in response.body

"""What Apache sends to the backend: the request-target as Apache canonicalises it (the
table apache/README.md explains), and the forwarding headers vend relies on.

A recording stand-in backend takes vend's place here, since vend does not echo requests.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from .client import LEGACY_NAME, get_request, raw_request
from .conftest import Content, Pki, vhost_defines
from .httpd import SHIPPED_VHOST, Apache, free_port, start_apache
from .recorder import Recorder

pytestmark = pytest.mark.apache


@pytest.fixture(scope="module", params=["tcp", "unix"])
def recorder(request: pytest.FixtureRequest, workdir: Path) -> Iterator[Recorder]:
    """A recording backend on a free loopback port, or on a Unix socket as the shipped
    vhost reaches vend: every test here runs over both."""
    unix = workdir / f"recorder-{free_port()}.sock" if request.param == "unix" else None
    backend = Recorder(unix_socket=unix).start()
    try:
        yield backend
    finally:
        backend.close()
        if unix is not None:
            unix.unlink(missing_ok=True)


@pytest.fixture(scope="module")
def recorded_front(
    workdir: Path, pki: Pki, content: Content, recorder: Recorder
) -> Iterator[Apache]:
    """Apache with the shipped vend.conf in front of the recording backend."""
    apache = start_apache(
        workdir / f"apache-recorded-{free_port()}",
        vhost=SHIPPED_VHOST,
        defines=vhost_defines(pki, content, recorder.address),
    )
    try:
        yield apache
    finally:
        apache.stop()


# (sent by the client, request-target the backend receives; or None and Apache's status)
TARGETS = [
    ("/index.html", "/index.html"),
    ("/docs/manual.pdf?v=2009&x=%2F%20", "/docs/manual.pdf?v=2009&x=%2F%20"),
    ("/a%20b.html", "/a%20b.html"),
    ("/caf%C3%A9.html", "/caf%C3%A9.html"),
    ("/caf%c3%a9.html", "/caf%C3%A9.html"),
    ("/%7Euser/x.html", "/~user/x.html"),
    ("/%41%42%43.html", "/ABC.html"),
    ("/a+b.html", "/a+b.html"),
    ("/a;b.html", "/a;b.html"),
    ("/a%25b.html", "/a%25b.html"),
    ("/a%23b.html", "/a%23b.html"),
    ("/a%5Cb.html", "/a%5Cb.html"),
    ("/a%0d%0aX-Injected:%201", "/a%0D%0AX-Injected:%201"),
    ("/dir/../x.html", "/x.html"),
    ("/a/%2e%2e/x.html", "/x.html"),
    ("//x.html", "/x.html"),
    ("/a/..;/b.html", "/a/..;/b.html"),
    ("/a%2Fb.html", (None, 404)),
    ("/a%3Fb.html", (None, 403)),
    ("/%2e%2e/x.html", (None, 400)),
    ("/a b.html", (None, 400)),
]


@pytest.mark.parametrize(("sent", "expected"), TARGETS, ids=[t[0] for t in TARGETS])
def test_request_target_reaching_the_backend(
    recorded_front: Apache,
    recorder: Recorder,
    pki: Pki,
    sent: str,
    expected: str | tuple[None, int],
) -> None:
    """The backend receives Apache's canonical form of the client's request-target (one
    decoding, unreserved characters unescaped, dot-segments and double slashes removed,
    everything else escaped once with upper-case hex), or Apache refuses it itself."""
    seen = len(recorder.requests)
    response = raw_request(recorded_front.https_port, get_request(sent), ca_pem=pki.ca_pem)
    received = [r.target for r in recorder.requests[seen:]]
    if isinstance(expected, str):
        assert response.status == 200
        assert received == [expected]
    else:
        assert (response.status, received) == (expected[1], [])


def test_forwarding_headers(recorded_front: Apache, recorder: Recorder, pki: Pki) -> None:
    """The backend gets the client's address appended to X-Forwarded-For, X-Forwarded-Proto
    https (whatever the client claimed), the legacy name as Host, and no Via."""
    seen = len(recorder.requests)
    request = (
        b"GET /index.html HTTP/1.1\r\nHost: " + LEGACY_NAME.encode() + b"\r\n"
        b"X-Forwarded-For: 203.0.113.9\r\nX-Forwarded-Proto: http\r\n"
        b"Connection: close\r\n\r\n"
    )
    response = raw_request(
        recorded_front.https_port, request, ca_pem=pki.ca_pem, source_address="127.0.0.5"
    )
    assert response.status == 200
    (received,) = recorder.requests[seen:]
    assert received.header("x-forwarded-for") == ["203.0.113.9, 127.0.0.5"]
    assert received.header("x-forwarded-proto") == ["https"]
    assert received.header("host") == [LEGACY_NAME]
    assert received.header("x-forwarded-host") == [LEGACY_NAME]
    assert received.header("via") == []
    assert received.request_line.endswith(" HTTP/1.1")


def test_backend_connections_are_reused(
    recorded_front: Apache, recorder: Recorder, pki: Pki
) -> None:
    """Requests from several client connections travel over fewer, pooled backend
    connections (the <Proxy> worker), not one new connection each."""
    before = recorder.connections
    for _ in range(20):
        response = raw_request(recorded_front.https_port, get_request("/x.html"), ca_pem=pki.ca_pem)
        assert response.status == 200
    assert recorder.connections - before <= 2

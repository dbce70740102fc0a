"""The shipped vend.conf reaching vend over its Unix socket (vend's ``unix_socket``), as it
ships, and the X-Forwarded-For rule for a peer on that socket."""

from __future__ import annotations

import grp
import os
import stat
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import wait_until

from .client import get_request, raw_request
from .conftest import Content, Pki, StartApache, StartVend
from .httpd import SHIPPED_VHOST, free_port
from .test_forwarded import CLIENT_ADDRESS, _logged_client, _request, _vend_log

pytestmark = pytest.mark.apache


@pytest.fixture
def socket_dir(workdir: Path) -> Iterator[Path]:
    """A directory for vend's socket, set up as apache/README.md says: its group is Apache's
    (``nogroup`` for the tests' Apache children when run as root), setgid so the socket
    file gets that group too, mode 2750."""
    path = workdir / f"vend-run-{free_port()}"
    path.mkdir()
    if os.geteuid() == 0:
        os.chown(path, 0, grp.getgrnam("nogroup").gr_gid)
    path.chmod(0o2750)
    try:
        yield path
    finally:
        for child in path.iterdir():
            child.unlink()
        path.rmdir()


def test_the_shipped_default_backend_is_vends_unix_socket() -> None:
    """vend.conf as shipped proxies to unix:/run/vend/vend.sock, vend's documented path."""
    assert "Define VEND_BACKEND       unix:/run/vend/vend.sock|http://localhost" in (
        SHIPPED_VHOST.read_text()
    )


def test_files_through_apache_over_the_unix_socket(
    vend_factory: StartVend,
    apache_factory: StartApache,
    pki: Pki,
    content: Content,
    socket_dir: Path,
) -> None:
    """Through the shipped vhost and vend's Unix socket (mode 0660, Apache's group), files
    come back byte-exact, HEAD and 404 as from vend, over a few pooled connections."""
    vend = vend_factory(unix_socket=socket_dir / "vend.sock")
    sock_stat = (socket_dir / "vend.sock").lstat()
    assert stat.S_ISSOCK(sock_stat.st_mode) and stat.S_IMODE(sock_stat.st_mode) == 0o660
    apache = apache_factory(vend.address)
    for name in ("index.html", "data/blob.bin", "docs/manual.pdf"):
        response = raw_request(apache.https_port, get_request(f"/{name}"), ca_pem=pki.ca_pem)
        assert response.status == 200, apache.error_log
        assert response.body == content.file(name)
    head = raw_request(
        apache.https_port, get_request("/index.html", method="HEAD"), ca_pem=pki.ca_pem, head=True
    )
    assert head.status == 200 and head.body == b""
    assert head.header("content-length") == str(len(content.file("index.html")))
    assert raw_request(apache.https_port, get_request("/nope.txt"), ca_pem=pki.ca_pem).status == 404
    # Every request above reached vend over the socket: each is in vend's log (written in
    # batches, at most 0.1 s after the request).
    wait_until(lambda: len(vend.access_lines()) >= 5, 10, "five access log lines")


@pytest.mark.parametrize(
    ("trusted", "logged"),
    [(None, CLIENT_ADDRESS), (["127.0.0.1", "::1"], "-")],
    ids=["default-trusts-unix", "without-unix"],
)
def test_forwarded_for_over_the_unix_socket(
    vend_factory: StartVend,
    apache_factory: StartApache,
    pki: Pki,
    socket_dir: Path,
    trusted: list[str] | None,
    logged: str,
) -> None:
    """Apache on vend's socket is believed when trusted_proxies holds "unix" (the default):
    vend logs the real client; without "unix", X-Forwarded-For is ignored and vend logs "-"."""
    vend = vend_factory(unix_socket=socket_dir / "vend.sock", trusted_proxies=trusted)
    apache = apache_factory(vend.address)
    marker = f"xff-{uuid.uuid4().hex}"
    response = raw_request(
        apache.https_port,
        _request(marker, forwarded_for="203.0.113.9"),
        ca_pem=pki.ca_pem,
        source_address=CLIENT_ADDRESS,
    )
    assert response.status == 200
    assert _logged_client(_vend_log(vend), marker) == logged

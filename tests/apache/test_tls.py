"""TLS on the legacy hostname: the certificate validates for the right names only, old
links come back byte-for-byte over HTTP/1.1 and HTTP/2, and only current TLS is offered."""

from __future__ import annotations

import socket
import ssl
import subprocess

import pytest

from .client import ALIAS_NAME, LEGACY_NAME, curl, tls_context
from .conftest import Content, Front

pytestmark = pytest.mark.apache

CURL_PEER_FAILED_VERIFICATION = 60


@pytest.mark.parametrize("name", [LEGACY_NAME, ALIAS_NAME])
def test_client_trusting_the_ca_validates_and_gets_the_bytes(
    front: Front, content: Content, name: str
) -> None:
    """A client that trusts only the private CA, pinned to 127.0.0.1 with SNI, validates
    the certificate for the legacy name (and its alias) and gets the file byte-for-byte."""
    result = curl(
        "--fail",
        "--output",
        "-",
        front.url("/data/blob.bin", name=name),
        port=front.apache.https_port,
        ca_pem=front.pki.ca_pem,
        name=name,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == content.file("data/blob.bin")


def test_client_without_the_ca_is_refused(front: Front) -> None:
    """The same client with only the system's CAs refuses the certificate."""
    result = curl(
        "--output",
        "/dev/null",
        front.url("/index.html"),
        port=front.apache.https_port,
        ca_pem=None,
    )
    assert result.returncode == CURL_PEER_FAILED_VERIFICATION, result.stderr


def test_name_not_on_the_certificate_fails_validation(front: Front) -> None:
    """A name that is not on the certificate fails validation even with the CA trusted."""
    other = "other.example.org"
    result = curl(
        "--output",
        "/dev/null",
        front.url("/index.html", name=other),
        port=front.apache.https_port,
        ca_pem=front.pki.ca_pem,
        name=other,
    )
    assert result.returncode == CURL_PEER_FAILED_VERIFICATION, result.stderr
    assert b"subject name" in result.stderr


def test_http2_fetches_old_links_byte_for_byte(front: Front, content: Content) -> None:
    """curl --http2 negotiates HTTP/2 with Apache (ALPN) and gets every file byte-for-byte."""
    features = subprocess.run(["curl", "--version"], capture_output=True, text=True, check=True)
    assert "HTTP2" in features.stdout, "this curl cannot speak HTTP/2"
    for name in ("index.html", "data/blob.bin", "docs/manual.pdf", "shared.txt"):
        result = curl(
            "--http2",
            "--fail",
            "--output",
            "-",
            "--write-out",
            "%{stderr}%{http_version}",
            front.url(f"/{name}"),
            port=front.apache.https_port,
            ca_pem=front.pki.ca_pem,
        )
        assert result.returncode == 0, result.stderr
        assert result.stderr == b"2", name
        assert result.stdout == content.file(name), name


def test_hsts_on_https_only(front: Front) -> None:
    """HTTPS answers carry Strict-Transport-Security; the port-80 redirect does not."""
    secure = curl(
        "--head", front.url("/index.html"), port=front.apache.https_port, ca_pem=front.pki.ca_pem
    )
    assert b"\nstrict-transport-security: max-age=63072000\r" in secure.stdout.lower()
    plain = curl("--head", front.http_url("/index.html"), port=front.apache.http_port, ca_pem=None)
    assert b"301" in plain.stdout.split(b"\r\n", 1)[0]
    assert b"strict-transport-security" not in plain.stdout.lower()


def _handshake(port: int, context: ssl.SSLContext) -> ssl.TLSVersion | str:
    """Return the negotiated TLS version, or the handshake error's reason."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        try:
            with context.wrap_socket(sock, server_hostname=LEGACY_NAME) as tls:
                version = tls.version()
                return ssl.TLSVersion[str(version).replace(".", "_")]
        except ssl.SSLError as exc:
            return str(exc.reason)


def test_only_forward_secret_aead_ciphers_on_tls12(front: Front) -> None:
    """TLS 1.3 and TLS 1.2 with ECDHE and AES-GCM are accepted; TLS 1.2 with RSA key
    exchange or CBC ciphers (which OpenSSL's defaults still allow) is refused by Apache."""
    modern = tls_context(front.pki.ca_pem)
    assert _handshake(front.apache.https_port, modern) == ssl.TLSVersion.TLSv1_3

    tls12 = tls_context(front.pki.ca_pem)
    tls12.maximum_version = ssl.TLSVersion.TLSv1_2
    tls12.set_ciphers("ECDHE-RSA-AES128-GCM-SHA256")
    assert _handshake(front.apache.https_port, tls12) == ssl.TLSVersion.TLSv1_2

    for weak in ("AES128-SHA", "AES256-GCM-SHA384", "ECDHE-RSA-AES128-SHA"):
        legacy = tls_context(front.pki.ca_pem)
        legacy.maximum_version = ssl.TLSVersion.TLSv1_2
        legacy.set_ciphers(weak)
        assert _handshake(front.apache.https_port, legacy) == "SSLV3_ALERT_HANDSHAKE_FAILURE", weak


@pytest.mark.parametrize("protocol", ["-tls1", "-tls1_1"])
def test_tls_below_1_2_is_refused(front: Front, protocol: str) -> None:
    """A TLS 1.0 or 1.1 client (allowed any cipher) gets Apache's "protocol version" alert."""
    result = subprocess.run(
        [
            "openssl",
            "s_client",
            "-connect",
            f"127.0.0.1:{front.apache.https_port}",
            "-servername",
            LEGACY_NAME,
            protocol,
            "-cipher",
            "DEFAULT:@SECLEVEL=0",
        ],
        input=b"",
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert result.returncode != 0
    assert b"alert protocol version" in result.stderr, result.stderr[-500:]

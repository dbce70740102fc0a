"""Fixtures for the Apache front tests: a private CA, content mounts, vend, and Apache.

Everything these fixtures start (Apache, vend) is stopped in ``finally`` blocks, and the
temporary directory is removed, even when a test fails.
"""

from __future__ import annotations

import os
import random
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest
import trustme

from .backend import Vend, start_vend
from .client import ALIAS_NAME, LEGACY_NAME
from .httpd import SHIPPED_VHOST, Apache, start_apache

MONITORING_ADDRESS = "127.0.0.9"
"""The loopback address the tests' monitoring system connects from (VEND_MONITORING)."""

CANARY = b"VEND-CANARY-OUTSIDE-THE-MOUNTS"
"""Content of files placed next to the mounts, which no response may ever contain."""


@dataclass(frozen=True)
class Pki:
    """A private root CA, an intermediate, and a leaf for the legacy hostname and its alias.

    Attributes:
        ca_pem: the CA certificate (the only thing clients trust).
        chain_pem: the leaf certificate followed by the intermediate (VEND_CERT_FILE).
        key_pem: the leaf's private key (VEND_KEY_FILE).
    """

    ca_pem: Path
    chain_pem: Path
    key_pem: Path


@dataclass(frozen=True)
class Content:
    """Two mounts with sample files, canaries outside them, and an ACME webroot.

    Attributes:
        root: the directory holding all of it.
        mounts: the mount directories, first has priority.
        acme_webroot: VEND_ACME_WEBROOT.
        acme_token: the name of a challenge file under ``.well-known/acme-challenge/``.
        acme_body: that file's content.
    """

    root: Path
    mounts: tuple[Path, ...]
    acme_webroot: Path
    acme_token: str
    acme_body: bytes

    def file(self, name: str) -> bytes:
        """Return the bytes vend should serve for ``name`` (first mount that has it)."""
        for mount in self.mounts:
            path = mount / name
            if path.is_file():
                return path.read_bytes()
        raise FileNotFoundError(name)


@dataclass(frozen=True)
class Front:
    """Apache with the shipped vhost in front of one vend.

    Attributes:
        apache: the running Apache.
        vend: the vend behind it.
        pki: the certificates Apache serves.
    """

    apache: Apache
    vend: Vend
    pki: Pki

    def url(self, path: str, *, name: str = LEGACY_NAME) -> str:
        """Return the HTTPS URL of ``path`` on the legacy hostname (pinned to loopback)."""
        return f"https://{name}:{self.apache.https_port}{path}"

    def http_url(self, path: str) -> str:
        """Return the plain-HTTP URL of ``path`` (the port-80 vhost)."""
        return f"http://{LEGACY_NAME}:{self.apache.http_port}{path}"

    def vend_url(self, path: str) -> str:
        """Return the URL of ``path`` on vend directly, without Apache."""
        return f"http://127.0.0.1:{self.vend.port}{path}"


def _deterministic_bytes(size: int, seed: int) -> bytes:
    """Return ``size`` pseudo-random bytes (so a body from a wrong offset never matches)."""
    return random.Random(seed).randbytes(size)


@pytest.fixture(scope="package")
def workdir() -> Iterator[Path]:
    """A world-readable temporary directory (Apache's children run as nobody under root)."""
    path = Path(tempfile.mkdtemp(prefix="vend-apache-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="package")
def pki(workdir: Path) -> Pki:
    """A trustme CA made for this run, an intermediate, and a leaf for the legacy hostname
    and its alias."""
    # RSA, as most certificates for legacy hosts still are; signed by an intermediate, so
    # validation works only if Apache sends the chain.
    ca = trustme.CA(key_type=trustme.KeyType.RSA)
    intermediate = ca.create_child_ca(key_type=trustme.KeyType.RSA)
    leaf = intermediate.issue_cert(LEGACY_NAME, ALIAS_NAME, key_type=trustme.KeyType.RSA)
    directory = workdir / "pki"
    directory.mkdir()
    directory.chmod(0o755)
    result = Pki(
        ca_pem=directory / "ca.pem",
        chain_pem=directory / "fullchain.pem",
        key_pem=directory / "privkey.pem",
    )
    ca.cert_pem.write_to_path(str(result.ca_pem))
    result.chain_pem.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
    leaf.private_key_pem.write_to_path(str(result.key_pem))
    result.key_pem.chmod(0o600)
    return result


@pytest.fixture(scope="package")
def content(workdir: Path) -> Content:
    """Two mounts (a name on both, where the first wins), canaries next to them, a symlink
    to /etc inside the first, and an ACME webroot with one challenge file."""
    root = workdir / "content"
    first, second = root / "m1", root / "m2"
    files = {
        first / "index.html": b"<!doctype html><title>legacy</title><p>old link works</p>\n",
        first / "css" / "site.css": b"body { color: #333; }\n" * 40,
        first / "data" / "blob.bin": _deterministic_bytes(3 * 1024 * 1024 + 17, seed=1),
        first / "shared.txt": b"served from the first mount\n",
        second / "shared.txt": b"shadowed copy on the second mount\n",
        second / "docs" / "manual.pdf": b"%PDF-1.4\n" + _deterministic_bytes(200_000, seed=2),
        root / "secret.txt": CANARY,
        root / "m1-private" / "secret.txt": CANARY,
    }
    for path, data in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    (first / "etc").symlink_to("/etc")
    webroot = root / "acme"
    challenges = webroot / ".well-known" / "acme-challenge"
    challenges.mkdir(parents=True)
    token = "Xj4cTqA9_LmWv2pR8sKdE1nYfHbZ0oUiG7tC3wQ5eJk"
    body = f"{token}.thumbprint-of-the-account-key".encode()
    (challenges / token).write_bytes(body)
    for dirpath, _dirnames, filenames in os.walk(root):
        Path(dirpath).chmod(0o755)
        for filename in filenames:
            (Path(dirpath) / filename).chmod(0o644)
    return Content(
        root=root, mounts=(first, second), acme_webroot=webroot, acme_token=token, acme_body=body
    )


def vhost_defines(
    pki: Pki, content: Content, backend: str, *, backends: tuple[str, ...] = ()
) -> dict[str, str]:
    """Return the values the tests give the shipped vhost's ``Define`` lines.

    Args:
        pki: the certificate and key.
        content: for the ACME webroot.
        backend: vend's URL (VEND_BACKEND) for vend.conf: ``http://127.0.0.1:PORT``, or
            ``unix:/PATH|http://localhost`` for vend on a Unix socket.
        backends: the URL of each member (VEND_BACKEND_1, _2, ...) for
            vend-balancer.conf; empty for vend.conf.
    """
    defines = {
        "VEND_SERVER_NAME": LEGACY_NAME,
        "VEND_SERVER_ALIAS": ALIAS_NAME,
        "VEND_CERT_FILE": str(pki.chain_pem),
        "VEND_KEY_FILE": str(pki.key_pem),
        "VEND_ACME_WEBROOT": str(content.acme_webroot),
        "VEND_MONITORING": f'"{MONITORING_ADDRESS}"',
    }
    if backends:
        for index, address in enumerate(backends, 1):
            defines[f"VEND_BACKEND_{index}"] = address
    else:
        defines["VEND_BACKEND"] = backend
    return defines


StartVend = Callable[..., Vend]
StartApache = Callable[..., Apache]


@pytest.fixture
def vend_factory(workdir: Path, content: Content) -> Iterator[StartVend]:
    """Start extra vend processes for one test (``start_vend`` arguments, mounts preset);
    all are stopped after the test."""
    started: list[Vend] = []

    def start(**kwargs: object) -> Vend:
        kwargs.setdefault("mounts", content.mounts)
        vend = start_vend(workdir, **kwargs)  # type: ignore[arg-type]
        started.append(vend)
        return vend

    try:
        yield start
    finally:
        for vend in started:
            vend.stop()


@pytest.fixture
def apache_factory(
    workdir: Path, pki: Pki, content: Content, request: pytest.FixtureRequest
) -> Iterator[StartApache]:
    """Start extra Apaches for one test: ``start(backend, vhost=..., backends=...,
    modules=..., defines=...)``; all are stopped after the test."""
    started: list[Apache] = []

    def start(
        backend: str = "",
        *,
        vhost: Path = SHIPPED_VHOST,
        backends: tuple[str, ...] = (),
        defines: Mapping[str, str] | None = None,
        **kwargs: object,
    ) -> Apache:
        root = workdir / f"apache-{request.node.name[:40]}-{len(started)}"
        all_defines = {**vhost_defines(pki, content, backend, backends=backends), **(defines or {})}
        apache = start_apache(root, vhost=vhost, defines=all_defines, **kwargs)  # type: ignore[arg-type]
        started.append(apache)
        return apache

    try:
        yield start
    finally:
        for apache in started:
            apache.stop()


@pytest.fixture(scope="package")
def vend(workdir: Path, content: Content) -> Iterator[Vend]:
    """The vend that the shared front proxies to (trusting the default proxies, loopback)."""
    server = start_vend(workdir, mounts=content.mounts)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="package")
def front(workdir: Path, pki: Pki, content: Content, vend: Vend) -> Iterator[Front]:
    """Apache with the shipped vend.conf in front of the shared vend, for tests that leave
    both running."""
    apache = start_apache(
        workdir / "apache-front",
        vhost=SHIPPED_VHOST,
        defines=vhost_defines(pki, content, vend.address),
    )
    try:
        yield Front(apache=apache, vend=vend, pki=pki)
    finally:
        apache.stop()

"""Checks that a peer answers each probe correctly before it is measured.

A server that answers 404 quickly would win every load, so each probe is fetched once and
its status, length and SHA-256 compared with the file on disk. The check also records
whether the peer honours a byte range (RFC 9110 section 14) on the largest probe.
"""

from __future__ import annotations

import hashlib
import http.client
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from harness.content import Probe

FETCH_TIMEOUT_S: Final = 60.0
_READ_BYTES: Final = 1024 * 1024


class ProbeMismatchError(Exception):
    """A peer answered a probe with the wrong status or bytes."""


@dataclass(frozen=True)
class ProbeCheck:
    """What the check found out about a peer.

    Attributes:
        honours_range: whether ``Range: bytes=0-99`` on the largest probe got 206 with
            exactly 100 bytes (None when not checked).
    """

    honours_range: bool | None


def _connect(scheme: str, port: int, cafile: Path | None) -> http.client.HTTPConnection:
    if scheme == "https":
        context = ssl.create_default_context(cafile=str(cafile) if cafile else None)
        return http.client.HTTPSConnection(
            "127.0.0.1", port, timeout=FETCH_TIMEOUT_S, context=context
        )
    return http.client.HTTPConnection("127.0.0.1", port, timeout=FETCH_TIMEOUT_S)


def verify_peer(
    *, scheme: str, port: int, probes: list[Probe], check_body: bool, cafile: Path | None = None
) -> ProbeCheck:
    """Fetches every probe once and compares the answer with the file.

    Args:
        scheme: "http" or "https".
        port: the peer's port on 127.0.0.1.
        probes: the probes the peer will be loaded with.
        check_body: compare SHA-256 (True) or only the length (False, for a peer that
            answers from memory).
        cafile: CA certificate that signed an HTTPS peer's certificate.

    Returns:
        The range check's outcome.

    Raises:
        ProbeMismatchError: on a status other than 200, a wrong length or wrong bytes.
        OSError: when the connection fails.
    """
    connection = _connect(scheme, port, cafile)
    try:
        for probe in probes:
            connection.request("GET", probe.url_path)
            response = connection.getresponse()
            digest = hashlib.sha256()
            length = 0
            while chunk := response.read(_READ_BYTES):
                digest.update(chunk)
                length += len(chunk)
            if response.status != 200:
                raise ProbeMismatchError(f"{probe.url_path}: status {response.status}")
            if length != probe.size_bytes:
                raise ProbeMismatchError(
                    f"{probe.url_path}: {length} bytes, expected {probe.size_bytes}"
                )
            if check_body and digest.hexdigest() != probe.sha256:
                raise ProbeMismatchError(f"{probe.url_path}: body differs from the file")
        if not check_body:
            return ProbeCheck(honours_range=None)
        largest = max(probes, key=lambda probe: probe.size_bytes)
        connection.request("GET", largest.url_path, headers={"Range": "bytes=0-99"})
        response = connection.getresponse()
        # Read at most a little more than asked: a peer ignoring Range sends everything.
        body = response.read(101) if response.status == 206 else b""
        honours = response.status == 206 and len(body) == 100
        return ProbeCheck(honours_range=honours)
    finally:
        connection.close()


def verify_missing(*, port: int, url_path: str) -> None:
    """Asks a plain HTTP peer for a name no mount has and expects 404 (RFC 9110 section
    15.5.5), so a peer answering every name with 200 cannot win the loads with misses.

    Args:
        port: the peer's port on 127.0.0.1.
        url_path: the missing name's request path.

    Raises:
        ProbeMismatchError: on any status but 404.
        OSError: when the connection fails.
    """
    connection = _connect("http", port, None)
    try:
        connection.request("GET", url_path)
        response = connection.getresponse()
        response.read()
        if response.status != 404:
            raise ProbeMismatchError(f"{url_path} (on no mount): status {response.status}")
    finally:
        connection.close()

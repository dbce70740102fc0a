"""Through Apache, vend's HTTP semantics (RFC 9110: ranges, conditionals, HEAD, errors)
reach the client as they leave vend: same status, same representation headers, same bytes."""

from __future__ import annotations

import re
from collections.abc import Iterator

import httpx
import pytest

from .client import front_client
from .conftest import Content, Front

pytestmark = pytest.mark.apache

# What vend decides and Apache must pass through unchanged (hop-by-hop fields, Date,
# Server and HSTS are Apache's own business).
END_TO_END = (
    "content-type",
    "content-length",
    "content-range",
    "content-encoding",
    "etag",
    "last-modified",
    "accept-ranges",
    "cache-control",
    "x-content-type-options",
    "allow",
    "retry-after",
    "location",
)


@pytest.fixture(scope="module")
def clients(front: Front) -> Iterator[tuple[httpx.Client, httpx.Client]]:
    """An httpx client through Apache (HTTPS, legacy name) and one straight to vend."""
    with front_client(front.pki.ca_pem) as through, httpx.Client(timeout=30) as direct:
        yield through, direct


def _validators(front: Front, path: str) -> tuple[str, str]:
    """Return the ETag and Last-Modified vend gives ``path``."""
    response = httpx.head(front.vend_url(path))
    return response.headers["etag"], response.headers["last-modified"]


def _parts(response: httpx.Response) -> list[tuple[str, bytes]] | bytes:
    """Return a multipart/byteranges body as (Content-Range, bytes) pairs, else the body.

    Boundaries are chosen per response, so two correct answers differ only in them.
    """
    match = re.fullmatch(
        r"multipart/byteranges; ?boundary=(\S+)", response.headers.get("content-type", "")
    )
    if not match:
        return response.content
    delimiter = b"\r\n--" + match.group(1).encode()
    body = b"\r\n" + response.content
    assert body.endswith(delimiter + b"--\r\n") or body.endswith(delimiter + b"--")
    parts = []
    for chunk in body.split(delimiter)[1:-1]:
        head, _, data = chunk.partition(b"\r\n\r\n")
        ranges = re.search(rb"(?im)^content-range: *(.+?)\s*$", head)
        assert ranges is not None
        parts.append((ranges.group(1).decode(), data))
    return parts


CASES = [
    ("GET", "/data/blob.bin", {}),
    ("HEAD", "/data/blob.bin", {}),
    ("GET", "/data/blob.bin", {"Range": "bytes=0-99"}),
    ("GET", "/data/blob.bin", {"Range": "bytes=-500"}),
    ("GET", "/data/blob.bin", {"Range": "bytes=3000000-"}),
    ("GET", "/data/blob.bin", {"Range": "bytes=0-9,100-199,3145000-3145010"}),
    ("HEAD", "/data/blob.bin", {"Range": "bytes=0-9"}),
    ("GET", "/data/blob.bin", {"Range": "bytes=99999999-"}),
    ("GET", "/data/blob.bin", {"Range": "bytes=5-1"}),
    ("GET", "/data/blob.bin", {"Range": "items=0-1"}),
    ("GET", "/data/blob.bin", {"If-None-Match": "{etag}"}),
    ("GET", "/data/blob.bin", {"If-None-Match": '"other", {etag}'}),
    ("HEAD", "/data/blob.bin", {"If-None-Match": "{etag}"}),
    ("GET", "/data/blob.bin", {"If-Modified-Since": "{last_modified}"}),
    ("GET", "/data/blob.bin", {"If-Match": '"not-the-etag"'}),
    ("GET", "/data/blob.bin", {"If-Unmodified-Since": "Thu, 01 Jan 1998 00:00:00 GMT"}),
    ("GET", "/data/blob.bin", {"If-Range": "{etag}", "Range": "bytes=10-19"}),
    ("GET", "/data/blob.bin", {"If-Range": '"stale"', "Range": "bytes=10-19"}),
    ("GET", "/index.html", {}),
    ("GET", "/shared.txt", {}),
    ("GET", "/docs/manual.pdf", {"Range": "bytes=0-7"}),
    ("GET", "/css/site.css", {"Accept-Encoding": "gzip, deflate, br"}),
    ("GET", "/index.html", {"Accept-Encoding": "gzip", "Range": "bytes=0-14"}),
    ("GET", "/no/such/file.html", {}),
    ("GET", "/.hidden", {}),
    ("POST", "/index.html", {}),
    ("DELETE", "/index.html", {}),
]


@pytest.mark.parametrize(
    ("method", "path", "headers"),
    CASES,
    ids=[f"{m} {p} {'; '.join(f'{k}: {v}' for k, v in h.items())}" for m, p, h in CASES],
)
def test_same_answer_through_apache_as_from_vend(
    front: Front,
    clients: tuple[httpx.Client, httpx.Client],
    method: str,
    path: str,
    headers: dict[str, str],
) -> None:
    """Status, end-to-end headers and body (multipart parts, whatever the boundary) are the
    same through Apache as straight from vend."""
    etag, last_modified = _validators(front, "/data/blob.bin")
    headers = {k: v.format(etag=etag, last_modified=last_modified) for k, v in headers.items()}
    through_client, direct_client = clients
    direct = direct_client.request(method, front.vend_url(path), headers=headers)
    through = through_client.request(method, front.url(path), headers=headers)
    assert through.status_code == direct.status_code
    for name in END_TO_END:
        if name == "content-type" and _parts(direct) != direct.content:
            continue  # the boundary differs; the parts are compared below
        assert through.headers.get(name) == direct.headers.get(name), name
    assert _parts(through) == _parts(direct)


def test_ranges_are_the_right_bytes(front: Front, content: Content) -> None:
    """A multi-range answer through Apache holds exactly the requested bytes of the file
    (so the comparison above is not between two equally wrong answers)."""
    blob = content.file("data/blob.bin")
    with front_client(front.pki.ca_pem) as client:
        response = client.get(front.url("/data/blob.bin"), headers={"Range": "bytes=0-9,-5"})
    assert response.status_code == 206
    size = len(blob)
    assert _parts(response) == [
        (f"bytes 0-9/{size}", blob[:10]),
        (f"bytes {size - 5}-{size - 1}/{size}", blob[-5:]),
    ]
    with front_client(front.pki.ca_pem) as client:
        single = client.get(front.url("/data/blob.bin"), headers={"Range": "bytes=1000-1999"})
    assert single.status_code == 206
    assert single.headers["content-range"] == f"bytes 1000-1999/{size}"
    assert single.content == blob[1000:2000]


def test_no_compression_on_proxied_text(front: Front) -> None:
    """Debian's default mod_deflate does not touch vend's text responses: no
    Content-Encoding, vend's strong ETag unchanged."""
    etag, _ = _validators(front, "/css/site.css")
    with front_client(front.pki.ca_pem) as client:
        response = client.get(front.url("/css/site.css"), headers={"Accept-Encoding": "gzip"})
    assert response.status_code == 200
    assert "content-encoding" not in response.headers
    assert response.headers["etag"] == etag
    assert not etag.startswith("W/")

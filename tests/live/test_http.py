"""HTTP semantics of ``vend serve`` over real sockets (RFC 9110), and federation order."""

from __future__ import annotations

import re

import httpx
import pytest

from tests.live.conftest import Tree
from tests.support import VendProcess, get_raw

pytestmark = pytest.mark.live


def test_full_get_of_a_large_file_is_byte_exact(server: VendProcess, tree: Tree) -> None:
    """A GET of an 80 MiB file on the last mount returns every byte, with its length."""
    with server.client() as client:
        response = client.get("/big.bin")
    assert response.status_code == 200
    assert response.headers["content-length"] == str(tree.big.stat().st_size)
    assert response.content == tree.big.read_bytes()


def test_single_range_is_byte_exact(server: VendProcess, tree: Tree) -> None:
    """One range gives 206, Content-Range, and exactly those bytes (inclusive end)."""
    data = tree.big.read_bytes()
    first, last = 5_000_000, 70_000_000
    with server.client() as client:
        response = client.get("/big.bin", headers={"Range": f"bytes={first}-{last}"})
    assert response.status_code == 206
    assert response.headers["content-range"] == f"bytes {first}-{last}/{len(data)}"
    assert response.content == data[first : last + 1]


def test_suffix_and_open_ranges(server: VendProcess, tree: Tree) -> None:
    """``-N`` gives the last N bytes and ``N-`` the bytes from N to the end."""
    data = tree.big.read_bytes()
    with server.client() as client:
        suffix = client.get("/big.bin", headers={"Range": "bytes=-1000"})
        tail = client.get("/big.bin", headers={"Range": f"bytes={len(data) - 10}-"})
    assert suffix.status_code == tail.status_code == 206
    assert suffix.content == data[-1000:]
    assert tail.content == data[-10:]


def _parse_multipart(body: bytes, boundary: bytes) -> list[tuple[dict[str, str], bytes]]:
    parts = []
    chunks = body.split(b"--" + boundary)
    assert chunks[0] == b"", "the body starts with the first boundary"
    assert chunks[-1] == b"--\r\n", "the body ends with the closing boundary and CRLF"
    for chunk in chunks[1:-1]:
        assert chunk.startswith(b"\r\n") and chunk.endswith(b"\r\n")
        head, _, payload = chunk[2:-2].partition(b"\r\n\r\n")
        fields = dict(line.decode().split(": ", 1) for line in head.split(b"\r\n"))
        parts.append((fields, payload))
    return parts


def test_multiple_ranges_are_multipart_byteranges(server: VendProcess, tree: Tree) -> None:
    """Several ranges give multipart/byteranges with CRLFs, exact parts and Content-Length."""
    data = tree.big.read_bytes()
    spec = [(0, 99), (1_000_000, 1_000_999), (len(data) - 64 * 1024 * 1024, len(data) - 1)]
    header = "bytes=" + ",".join(f"{a}-{b}" for a, b in spec)
    with server.client() as client:
        response = client.get("/big.bin", headers={"Range": header})
    assert response.status_code == 206
    match = re.fullmatch(r"multipart/byteranges; boundary=(\S+)", response.headers["content-type"])
    assert match
    assert int(response.headers["content-length"]) == len(response.content)
    parts = _parse_multipart(response.content, match.group(1).encode())
    assert len(parts) == len(spec)
    for (fields, payload), (a, b) in zip(parts, spec, strict=True):
        assert fields["Content-Type"] == "application/octet-stream"
        assert fields["Content-Range"] == f"bytes {a}-{b}/{len(data)}"
        assert payload == data[a : b + 1]


def test_head_sends_the_get_headers_and_no_body(server: VendProcess, tree: Tree) -> None:
    """HEAD answers the same status and representation headers as GET, with no body."""
    raw = get_raw(server.port, b"/docs/only-m3.css", method=b"HEAD")
    with server.client() as client:
        got = client.get("/docs/only-m3.css")
    assert raw.status == 200 and raw.body == b""
    for field in (
        "content-type",
        "content-length",
        "etag",
        "last-modified",
        "accept-ranges",
        "cache-control",
    ):
        assert raw.headers[field] == got.headers[field]
    assert raw.headers["content-type"] == "text/css"
    assert raw.headers["x-content-type-options"] == "nosniff"


def test_validators_and_conditional_requests(server: VendProcess, tree: Tree) -> None:
    """ETag/Last-Modified drive 304 (If-None-Match, If-Modified-Since) and 412 (If-Match...)."""
    with server.client() as client:
        first = client.get("/shared.txt")
        etag, modified = first.headers["etag"], first.headers["last-modified"]
        assert re.fullmatch(r'"[0-9a-f]+-[0-9a-f]+"', etag), "a strong ETag of size and mtime"
        not_modified = client.get("/shared.txt", headers={"If-None-Match": etag})
        assert not_modified.status_code == 304 and not_modified.content == b""
        assert not_modified.headers["etag"] == etag
        assert client.get("/shared.txt", headers={"If-Modified-Since": modified}).status_code == 304
        assert client.get("/shared.txt", headers={"If-None-Match": '"other"'}).status_code == 200
        assert client.get("/shared.txt", headers={"If-Match": '"other"'}).status_code == 412
        assert client.get("/shared.txt", headers={"If-Match": etag}).status_code == 200
        old = "Sat, 01 Jan 2000 00:00:00 GMT"
        assert client.get("/shared.txt", headers={"If-Unmodified-Since": old}).status_code == 412
        # If-None-Match wins over If-Modified-Since (RFC 9110 section 13.2.2).
        both = client.get(
            "/shared.txt", headers={"If-None-Match": '"other"', "If-Modified-Since": modified}
        )
        assert both.status_code == 200


def test_if_range_and_unsatisfiable_range(server: VendProcess, tree: Tree) -> None:
    """If-Range with a stale validator gives 200; a range past the end gives 416 */size."""
    size = (tree.mounts[0] / "shared.txt").stat().st_size
    with server.client() as client:
        etag = client.head("/shared.txt").headers["etag"]
        ranged = client.get("/shared.txt", headers={"Range": "bytes=0-3", "If-Range": etag})
        stale = client.get("/shared.txt", headers={"Range": "bytes=0-3", "If-Range": '"stale"'})
        beyond = client.get("/shared.txt", headers={"Range": f"bytes={size}-"})
        malformed = client.get("/shared.txt", headers={"Range": "bytes=zz"})
        other_unit = client.get("/shared.txt", headers={"Range": "items=0-1"})
        many = client.get(
            "/shared.txt", headers={"Range": "bytes=" + ",".join(f"{i}-{i}" for i in range(20))}
        )
        overlapping = client.get("/shared.txt", headers={"Range": "bytes=0-5,3-8"})
    assert ranged.status_code == 206 and ranged.content == b"shar"
    assert stale.status_code == 200 and len(stale.content) == size
    assert beyond.status_code == 416
    assert beyond.headers["content-range"] == f"bytes */{size}"
    for ignored in (malformed, other_unit, many, overlapping):
        assert ignored.status_code == 200 and len(ignored.content) == size


def test_first_mount_wins_and_later_mounts_fill_in(server: VendProcess, tree: Tree) -> None:
    """A name on three mounts comes from the first; names only on m2 or m3 are found there."""
    with server.client() as client:
        assert client.get("/shared.txt").content == b"shared: the copy on m1\n"
        assert client.get("/only-m2.txt").content == b"only on m2\n"
        assert client.get("/docs/only-m3.css").content == b"body { color: #333; }\n"
        empty = client.get("/empty.txt")
    assert (
        empty.status_code == 200 and empty.content == b"" and empty.headers["content-length"] == "0"
    )


def test_symlinks_inside_served_outside_refused(server: VendProcess, tree: Tree) -> None:
    """A symlink within the mount is served; links leaving it (relative, absolute) are 404."""
    with server.client() as client:
        inside = client.get("/inside-link.txt")
        assert (
            inside.status_code == 200
            and inside.content == (tree.mounts[0] / "index.html").read_bytes()
        )
        for name in (
            "/escape.txt",
            "/abs-escape.txt",
            "/sibling/canary.txt",
            "/etc/passwd",
            "/etc/hostname",
        ):
            response = client.get(name)
            assert response.status_code == 404, name
            assert not any(c in response.content for c in tree.canaries)


def test_methods_directories_and_special_files(server: VendProcess, tree: Tree) -> None:
    """Other methods get 405 with Allow; directories, FIFOs, sockets and devices are 404 and
    never count against the mount's health."""
    with server.client() as client:
        post = client.post("/shared.txt", content=b"x")
        assert post.status_code == 405 and post.headers["allow"] == "GET, HEAD"
        for path in (
            "/",
            "/docs",
            "/docs/",
            "/fifo.txt",
            "/socket.txt",
            "/device.txt",
            "/nothing.txt",
        ):
            assert client.get(path).status_code == 404, path
        assert client.get("/shared.txt?v=123&cache=bust").content == b"shared: the copy on m1\n"
        health = client.get("/.well-known/vend/health").json()
    assert [(m["state"], m["last_error"]) for m in health["mounts"]] == [("up", None)] * 3


def test_error_bodies_name_no_filesystem_path(server: VendProcess, tree: Tree) -> None:
    """No error body contains the mounts' paths or the base directory."""
    with server.client() as client:
        responses = [client.get(p) for p in ("/nothing.txt", "/%2e%2e/x", "/a//b", "/.env")]
        responses.append(client.request("DELETE", "/shared.txt"))
    for response in responses:
        assert response.status_code in (400, 404, 405)
        assert str(tree.base).encode() not in response.content
        assert b"/srv/" not in response.content and b"Traceback" not in response.content


def test_keep_alive_serves_many_requests_on_one_connection(server: VendProcess) -> None:
    """A keep-alive connection carries a sendfile body and then further requests."""
    with httpx.Client(base_url=server.url, limits=httpx.Limits(max_connections=1)) as client:
        bodies = [
            client.get(p).content for p in ("/docs/only-m3.css", "/shared.txt", "/docs/only-m3.css")
        ]
    assert bodies == [
        b"body { color: #333; }\n",
        b"shared: the copy on m1\n",
        b"body { color: #333; }\n",
    ]


def test_absurd_dates_are_ignored_not_a_500(server: VendProcess) -> None:
    """Dates too large for the platform are invalid dates: ignored (RFC 9110 section 13.1)."""
    huge = "Mon, 01 Jan 99999999999999999999 00:00:00 GMT"
    with server.client() as client:
        for field in ("If-Modified-Since", "If-Unmodified-Since"):
            assert client.get("/shared.txt", headers={field: huge}).status_code == 200
        ranged = client.get("/shared.txt", headers={"Range": "bytes=0-3", "If-Range": huge})
        zone = client.get(
            "/shared.txt",
            headers={"If-Modified-Since": "Mon, 01 Jan 2000 00:00:00 +99999999999999999999"},
        )
    assert ranged.status_code == 200 and zone.status_code == 200


def test_range_and_dates_outside_their_abnf_are_ignored(server: VendProcess, tree: Tree) -> None:
    """Non-ASCII digits in Range (once a 500) and repeated or listed dates are ignored: 200."""
    body = (tree.mounts[0] / "shared.txt").read_bytes()
    modified = httpx.get(f"{server.url}/shared.txt").headers["last-modified"]
    cases = [
        b"Range: bytes=1-\xb2\r\n",  # Latin-1 superscript two: str.isdigit() said yes, int() failed
        b"Range: bytes=\xc2\xb2-3\r\n",  # the same character in UTF-8
        b"Range: bytes=1-\xd9\xa3\r\n",  # Arabic-Indic three
        b"Range: bytes = 0-3\r\n",
        b"Range: bytes=0-3\r\nRange: bytes=0-3\r\n",
        b"If-Modified-Since: %s\r\nIf-Modified-Since: %s\r\n"
        % (modified.encode(), modified.encode()),
        b"If-Modified-Since: %s, %s\r\n" % (modified.encode(), modified.encode()),
    ]
    for extra in cases:
        response = get_raw(server.port, b"/shared.txt", extra=extra)
        assert (response.status, response.body) == (200, body), extra
    single = get_raw(
        server.port, b"/shared.txt", extra=b"If-Modified-Since: %s\r\n" % modified.encode()
    )
    assert single.status == 304

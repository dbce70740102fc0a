"""Media types, representations, mountinfo parsing and containment checks."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from app.federation.mountinfo import filesystem_type, mount_id_of, mount_points
from app.federation.open import is_within
from app.http.media_types import MediaTypes
from app.http.responses import _HEADERS_OF_304, make_representation


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("a.html", "text/html"),
        ("js/app.js", "text/javascript"),
        ("site.CSS", "text/css"),
        ("logo.png", "image/png"),
        ("manual.pdf", "application/pdf"),
        ("changelog.Debian.gz", "application/gzip"),
        ("font.woff2", "font/woff2"),
        ("README", "application/octet-stream"),
        ("dir.d/noext", "application/octet-stream"),
        ("x.unknownext", "application/octet-stream"),
    ],
)
def test_media_types(name: str, expected: str) -> None:
    """Content-Type follows the last extension, case-insensitively, from a fixed table."""
    assert MediaTypes().for_name(name) == expected


def test_operator_media_types_win() -> None:
    """The mime_types setting adds and overrides extensions."""
    types = MediaTypes({".js": "application/javascript", ".vend": "text/x-vend"})
    assert types.for_name("a.js") == "application/javascript"
    assert types.for_name("a.VEND") == "text/x-vend"


MOUNTINFO = """\
22 1 0:21 / / rw,relatime shared:1 - ext4 /dev/vda rw
30 22 0:30 / /server1/content ro,relatime shared:5 - nfs4 fs1:/content ro,vers=4.2
31 22 0:31 / /server2/content ro,relatime - fuse.sshfs user@host:/content ro
32 22 0:32 / /srv/with\\040space rw - tmpfs tmpfs rw
"""


@pytest.mark.parametrize(
    ("path", "fs"),
    [
        ("/server1/content/a/b", "nfs4"),
        ("/server1/content", "nfs4"),
        ("/server1/contentx", "ext4"),
        ("/server2/content/x", "fuse.sshfs"),
        ("/srv/with space/f", "tmpfs"),
        ("/home", "ext4"),
    ],
)
def test_filesystem_type_from_mountinfo(tmp_path: Path, path: str, fs: str) -> None:
    """The deepest mount point containing the path gives its type (octal escapes undone)."""
    info = tmp_path / "mountinfo"
    info.write_text(MOUNTINFO)
    assert filesystem_type(path, str(info)) == fs


def test_mount_points_by_mount_id(tmp_path: Path) -> None:
    """mount_points maps each mount ID to its mount point, escapes undone."""
    info = tmp_path / "mountinfo"
    info.write_text(MOUNTINFO)
    assert mount_points(str(info)) == {
        22: "/",
        30: "/server1/content",
        31: "/server2/content",
        32: "/srv/with space",
    }


def test_mount_id_of_a_descriptor() -> None:
    """The root directory's descriptor lies on the mount that mountinfo lists at /."""
    fd = os.open("/", os.O_PATH)
    try:
        mount_id = mount_id_of(fd)
    finally:
        os.close(fd)
    assert mount_id is not None and mount_points().get(mount_id) == "/"


def test_filesystem_type_of_this_machine() -> None:
    """On this machine /proc/self/mountinfo is readable and names the root's type."""
    assert filesystem_type("/") not in (None, "")


@pytest.mark.parametrize(
    ("path", "root", "inside"),
    [
        ("/srv/content/a", "/srv/content", True),
        ("/srv/content", "/srv/content", False),
        ("/srv/content-old/a", "/srv/content", False),
        ("/srv", "/srv/content", False),
        ("/etc/passwd", "/srv/content", False),
        ("/srv/content/", "/srv/content", True),
        ("/a", "/", True),
        ("/", "/", False),
    ],
)
def test_is_within_uses_path_components(path: str, root: str, inside: bool) -> None:
    """Containment goes by whole path components: a sibling sharing a string prefix
    (``content-old``) is outside."""
    assert is_within(path, root) is inside


@pytest.mark.parametrize(
    ("size", "mtime_ns", "media_type", "cache_control"),
    [
        (0, 0, "text/html", "public, max-age=300"),
        (4096, 1_733_580_000_123_456_789, "application/octet-stream", "no-cache"),
        (1, 10**18, "text/plain; charset=utf-8", "max-age=0, must-revalidate"),
    ],
)
def test_representation_fields_of_200_and_304(
    size: int, mtime_ns: int, media_type: str, cache_control: str
) -> None:
    """A 304 repeats exactly the 200's fields that RFC 9110 section 15.4.5 asks for
    (``_HEADERS_OF_304``), in the 200's order; the 200 adds Content-Length."""
    rep = make_representation(size, mtime_ns, media_type, cache_control)
    assert rep.headers_304 == tuple((n, v) for n, v in rep.headers if n in _HEADERS_OF_304)
    assert [n for n, _ in rep.headers_304] == [b"etag", b"cache-control"]
    assert rep.headers_200 == (*rep.headers, (b"content-length", str(size).encode()))
    assert dict(rep.headers)[b"content-type"] == media_type.encode()
    assert dict(rep.headers)[b"cache-control"] == cache_control.encode()
    assert dict(rep.headers)[b"etag"] == rep.validators.etag.encode()
    assert dict(rep.headers)[b"last-modified"] == rep.validators.last_modified.encode()

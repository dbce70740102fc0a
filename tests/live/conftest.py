"""Content trees for the live tests: three mounts with shadowed names, symlinks, canaries."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest

BIG_BYTES = 80 * 1024 * 1024  # over 64 MiB, as the core issue asks


@dataclass
class Tree:
    """Three mounts under one base directory, and the canaries around them."""

    base: Path
    mounts: list[Path]
    canaries: list[bytes]
    big: Path


@pytest.fixture(scope="session")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Tree:
    """m1, m2, m3 (priority order); canaries one level up and in look-alike siblings."""
    base = tmp_path_factory.mktemp("content")
    mounts = [base / "srv" / name for name in ("m1", "m2", "m3")]
    for m in mounts:
        m.mkdir(parents=True)
    canaries = []
    # A canary one level above each mount, and one in a sibling sharing the mount's prefix.
    for m in mounts:
        for place in (m.parent / f"canary-above-{m.name}.txt", Path(f"{m}-secret") / "canary.txt"):
            place.parent.mkdir(exist_ok=True)
            token = f"CANARY-{place.parent.name}-{os.urandom(8).hex()}".encode()
            place.write_bytes(token)
            canaries.append(token)
    m1, m2, m3 = mounts
    (m1 / "index.html").write_bytes(b"<html>m1 index</html>\n")
    (m1 / "shared.txt").write_bytes(b"shared: the copy on m1\n")
    (m2 / "shared.txt").write_bytes(b"shared: the copy on m2, shadowed\n")
    (m3 / "shared.txt").write_bytes(b"shared: the copy on m3, shadowed\n")
    (m2 / "only-m2.txt").write_bytes(b"only on m2\n")
    (m3 / "docs").mkdir()
    (m3 / "docs" / "only-m3.css").write_bytes(b"body { color: #333; }\n")
    (m3 / "empty.txt").write_bytes(b"")
    # Symlinks: one that stays inside its mount, several that leave it.
    (m1 / "inside-link.txt").symlink_to("index.html")
    (m1 / "etc").symlink_to("/etc")  # the hostile corpus asks for /etc/passwd through it
    (m1 / "escape.txt").symlink_to(f"../canary-above-{m1.name}.txt")
    (m1 / "sibling").symlink_to(f"{m1}-secret")
    (m2 / "abs-escape.txt").symlink_to(m1.parent / f"canary-above-{m2.name}.txt")
    (m1 / ".htaccess").write_bytes(canaries[0])
    (m1 / ".env").write_bytes(canaries[0])
    (m1 / "static").mkdir()
    (m1 / "static" / "app.js").write_bytes(b"// app\n")
    (m1 / "icons").mkdir()
    os.mkfifo(m1 / "fifo.txt")
    import socket
    import stat

    with socket.socket(socket.AF_UNIX) as unix:
        unix.bind(str(m1 / "socket.txt"))  # the bound socket file outlives the socket
    if os.geteuid() == 0:
        os.mknod(m1 / "device.txt", stat.S_IFCHR | 0o644, os.makedev(1, 3))  # like /dev/null
    big = m3 / "big.bin"
    with open(big, "wb") as handle:
        for _ in range(BIG_BYTES // (1 << 20)):
            handle.write(os.urandom(1 << 20))
    return Tree(base=base, mounts=mounts, canaries=canaries, big=big)


@pytest.fixture(scope="module")
def server(tree: Tree, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """One ``vend serve`` over the three mounts for a whole test module."""
    from tests.support import VendProcess

    proc = VendProcess([str(m) for m in tree.mounts])
    try:
        proc.start(tmp_path_factory.mktemp("server") / "vend.log")
        yield proc
    finally:
        proc.stop()

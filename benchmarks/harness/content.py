"""The content tree every peer serves: three mounts, the probe files only on the last one.

Layout under ``<work>/mounts``::

    server1/  server2/  server3/          the mounts, searched in this order
      docs/dNN/sNN/page-NNNN.html         about 2,000 files of 4 KiB across the three mounts
      media/file-NN.pdf                   100 KiB files, a few on each mount
    server3/probe/4k.bin                  the files the loads request: only on the last mount,
    server3/probe/100k.bin                so a federating server misses on the first two
    server3/probe/256m.bin

The tree is built once and reused while the stamp file matches ``LAYOUT_VERSION``. The
"4 KiB, 2,000 names" load asks for the small files at random (their paths are listed in
``<work>/mounts/names-4k.txt``); they are spread over all three mounts, so only peers that
search every mount serve it.

The long-tail loads (``build_long_tail_tree``) have a tree of their own, many more names
than any cache holds, under ``<work>/longtail``::

    server1/  server2/  server3/          the mounts, searched in this order
      old/dNNN/page-NNNNNN.html           name i (4 KiB) on mount i % 3, in folder i % 500
    names.txt                             every name, one a line, in a seeded random order
                                          (the Zipf loads take line k as rank k)
    missing.txt                           as many names that no mount has (old/dNNN/
                                          gone-NNNNNN.html: a deleted file in a real folder)
"""

from __future__ import annotations

import hashlib
import os
import random
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Final

LAYOUT_VERSION: Final = "vend-bench-layout-2"
MOUNT_NAMES: Final = ("server1", "server2", "server3")
SMALL_FILE_COUNT: Final = 2000
SMALL_FILE_BYTES: Final = 4 * 1024
MEDIUM_FILES_PER_MOUNT: Final = 10
MEDIUM_FILE_BYTES: Final = 100 * 1024
LARGE_FILE_BYTES: Final = 256 * 1024 * 1024
LONG_TAIL_LAYOUT_VERSION: Final = "vend-bench-long-tail-1"
LONG_TAIL_FILE_COUNT: Final = 200_000
LONG_TAIL_FOLDERS: Final = 500
# Written in 1 MiB blocks of random bytes so no layer can shortcut zero pages.
_BLOCK_BYTES: Final = 1024 * 1024


@dataclass(frozen=True)
class Probe:
    """One file the loads request.

    Attributes:
        key: short load label used in tables and files ("4k", "4k-names", "100k", "256m").
        label: the load as people write it ("4 KiB").
        url_path: the request target, e.g. "/probe/4k.bin" (for a load over many names,
            one of them, checked before the load).
        size_bytes: exact body length in bytes.
        sha256: hex digest of the body, to verify each peer's answer.
        names_file: for a load over many names, the file listing their paths, one per
            line, which wrk picks from at random; None for one URL.
    """

    key: str
    label: str
    url_path: str
    size_bytes: int
    sha256: str
    names_file: Path | None = None


PROBE_SIZES: Final = (
    ("4k", "4 KiB", SMALL_FILE_BYTES),
    ("100k", "100 KiB", MEDIUM_FILE_BYTES),
    ("256m", "256 MiB", LARGE_FILE_BYTES),
)
NAMES_KEY: Final = "4k-names"
NAMES_LABEL: Final = f"4 KiB, {SMALL_FILE_COUNT:,} names at random"
# Every load, in table order: (key, label).
LOAD_LABELS: Final = (
    ("4k", "4 KiB"),
    (NAMES_KEY, NAMES_LABEL),
    ("100k", "100 KiB"),
    ("256m", "256 MiB"),
)


def small_file_path(index: int) -> str:
    """Returns the request path of small file ``index`` (0 <= index < SMALL_FILE_COUNT)."""
    return f"/docs/d{index % 10:02d}/s{index // 10 % 10:02d}/page-{index:04d}.html"


def mount_dirs(work_dir: Path) -> list[Path]:
    """Returns the mount directories in search order.

    Args:
        work_dir: the benchmark work directory (benchmarks/work).

    Returns:
        Absolute paths of server1, server2, server3 under ``work_dir/mounts``.
    """
    return [(work_dir / "mounts" / name).resolve() for name in MOUNT_NAMES]


def build_tree(work_dir: Path) -> dict[str, Probe]:
    """Builds the three mounts unless an up-to-date tree is already there.

    Args:
        work_dir: the benchmark work directory; the tree goes to ``work_dir/mounts``.

    Returns:
        The probes by key ("4k", "4k-names", "100k", "256m"), with their digests.

    Raises:
        OSError: when the tree cannot be written (disk full, permissions).
    """
    root = work_dir / "mounts"
    stamp = root / ".layout"
    if not (stamp.is_file() and stamp.read_text() == LAYOUT_VERSION):
        if root.exists():
            shutil.rmtree(root)
        _write_tree(root)
        stamp.write_text(LAYOUT_VERSION)
    probes = _describe_probes(root / MOUNT_NAMES[-1])
    # The names load is checked on a name the first mount does not have.
    first = root / MOUNT_NAMES[1] / small_file_path(1).lstrip("/")
    probes[NAMES_KEY] = Probe(
        NAMES_KEY,
        NAMES_LABEL,
        small_file_path(1),
        SMALL_FILE_BYTES,
        hashlib.sha256(first.read_bytes()).hexdigest(),
        names_file=root / "names-4k.txt",
    )
    return probes


def _write_tree(root: Path) -> None:
    rng = random.Random(20240605)
    mounts = [root / name for name in MOUNT_NAMES]
    for index in range(SMALL_FILE_COUNT):
        path = mounts[index % len(mounts)] / small_file_path(index).lstrip("/")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(rng.randbytes(SMALL_FILE_BYTES))
    names = "".join(small_file_path(index) + "\n" for index in range(SMALL_FILE_COUNT))
    (root / "names-4k.txt").write_text(names)
    for mount in mounts:
        (mount / "media").mkdir(parents=True, exist_ok=True)
        for index in range(MEDIUM_FILES_PER_MOUNT):
            data = rng.randbytes(MEDIUM_FILE_BYTES)
            (mount / "media" / f"file-{index:02d}.pdf").write_bytes(data)
    probe_dir = mounts[-1] / "probe"
    probe_dir.mkdir(parents=True)
    (probe_dir / "4k.bin").write_bytes(rng.randbytes(SMALL_FILE_BYTES))
    (probe_dir / "100k.bin").write_bytes(rng.randbytes(MEDIUM_FILE_BYTES))
    blocks = [rng.randbytes(_BLOCK_BYTES) for _ in range(16)]
    with (probe_dir / "256m.bin").open("wb") as large:
        for index in range(LARGE_FILE_BYTES // _BLOCK_BYTES):
            large.write(blocks[index % len(blocks)])
        large.flush()
        os.fsync(large.fileno())


def _describe_probes(last_mount: Path) -> dict[str, Probe]:
    probes = {}
    for key, label, size in PROBE_SIZES:
        path = last_mount / "probe" / f"{key}.bin"
        digest = hashlib.sha256()
        with path.open("rb") as body:
            while chunk := body.read(_BLOCK_BYTES):
                digest.update(chunk)
        if path.stat().st_size != size:
            raise OSError(f"{path} has {path.stat().st_size} bytes, expected {size}")
        probes[key] = Probe(key, label, f"/probe/{key}.bin", size, digest.hexdigest())
    return probes


@dataclass(frozen=True)
class LongTailTree:
    """The long-tail tree on disk.

    Attributes:
        root: ``<work>/longtail``.
        mounts: the three mount directories, in search order.
        count: how many distinct files it holds (a third on each mount).
        names_file: every file's request path, one a line, in a seeded random order.
        missing_file: as many request paths that no mount has, one a line.
        checks: one probe per mount (the first name on it), to check a peer's answers.
    """

    root: Path
    mounts: list[Path]
    count: int
    names_file: Path
    missing_file: Path
    checks: list[Probe]


def long_tail_path(index: int) -> str:
    """Returns the request path of long-tail file ``index`` (any index >= 0).

    Args:
        index: the file's number; it lies on mount ``index % 3``.

    Returns:
        e.g. "/old/d007/page-000007.html".
    """
    return f"/old/d{index % LONG_TAIL_FOLDERS:03d}/page-{index:06d}.html"


def long_tail_missing_path(index: int) -> str:
    """Returns a request path no mount has, in the folder of file ``index``.

    Args:
        index: any index >= 0.

    Returns:
        e.g. "/old/d007/gone-000007.html".
    """
    return f"/old/d{index % LONG_TAIL_FOLDERS:03d}/gone-{index:06d}.html"


def build_long_tail_tree(work_dir: Path, count: int = LONG_TAIL_FILE_COUNT) -> LongTailTree:
    """Builds the long-tail tree unless one of ``count`` files is already there.

    One Python loop writes every file (no process per file): about 30 s for 200,000
    files of 4 KiB here. Each file is distinct (its first 16 bytes are its number).

    Args:
        work_dir: the benchmark work directory; the tree goes to ``work_dir/longtail``.
        count: how many files (at least 3: one per mount).

    Returns:
        The tree.

    Raises:
        ValueError: ``count`` is below 3.
        OSError: when the tree cannot be written (disk full, permissions).
    """
    if count < len(MOUNT_NAMES):
        raise ValueError(f"the long-tail tree needs at least {len(MOUNT_NAMES)} files")
    root = work_dir / "longtail"
    stamp = root / ".layout"
    want = f"{LONG_TAIL_LAYOUT_VERSION} {count}"
    if not (stamp.is_file() and stamp.read_text() == want):
        if root.exists():
            shutil.rmtree(root)
        _write_long_tail(root, count)
        stamp.write_text(want)
    mounts = [(root / name).resolve() for name in MOUNT_NAMES]
    checks = []
    for index in range(len(MOUNT_NAMES)):
        path = long_tail_path(index)
        body = (mounts[index] / path.lstrip("/")).read_bytes()
        checks.append(
            Probe(
                f"check-{index + 1}", "long tail", path, len(body), hashlib.sha256(body).hexdigest()
            )
        )
    return LongTailTree(
        root=root,
        mounts=mounts,
        count=count,
        names_file=root / "names.txt",
        missing_file=root / "missing.txt",
        checks=checks,
    )


def prime_long_tail_tree(tree: LongTailTree) -> int:
    """Reads every file of the tree once, so that no peer pays for what the first reader
    after a build (or after a day: relatime) pays: pages read from disk and an access
    time written back for each file.

    Args:
        tree: the long-tail tree.

    Returns:
        Bytes read.

    Raises:
        OSError: when a file cannot be read.
    """
    total = 0
    for index in range(tree.count):
        path = tree.mounts[index % len(tree.mounts)] / long_tail_path(index).lstrip("/")
        with open(path, "rb") as body:
            total += len(body.read())
    return total


def _write_long_tail(root: Path, count: int) -> None:
    rng = random.Random(20261207)
    filler = rng.randbytes(SMALL_FILE_BYTES)
    mounts = [root / name for name in MOUNT_NAMES]
    for mount in mounts:
        for folder in range(LONG_TAIL_FOLDERS):
            (mount / "old" / f"d{folder:03d}").mkdir(parents=True, exist_ok=True)
    for index in range(count):
        path = mounts[index % len(mounts)] / long_tail_path(index).lstrip("/")
        with open(path, "wb") as out:
            out.write(f"{index:015d}\n".encode() + filler[16:])
    order = list(range(count))
    rng.shuffle(order)
    (root / "names.txt").write_text("".join(long_tail_path(i) + "\n" for i in order))
    (root / "missing.txt").write_text("".join(long_tail_missing_path(i) + "\n" for i in order))

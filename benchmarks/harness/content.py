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

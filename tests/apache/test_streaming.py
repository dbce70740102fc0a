"""A large file streams through Apache: byte-exact, and neither Apache nor vend holds it
in memory, even while the client pauses mid-body."""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.support import rss_bytes

from .client import front_client
from .conftest import Content, Front

pytestmark = pytest.mark.apache

MIB = 1024 * 1024
BIG_SIZE_BYTES = 256 * MIB
# Well under the file's size, well above what buffers and allocator noise come to.
RSS_GROWTH_LIMIT_BYTES = 48 * MIB


@dataclass(frozen=True)
class BigFile:
    """A 256 MiB file on the second mount.

    Attributes:
        name: its name under the mount.
        sha256: the hex digest of its content.
    """

    name: str
    sha256: str


@pytest.fixture(scope="module")
def big_file(content: Content) -> Iterator[BigFile]:
    """Write 256 MiB of random bytes (so no offset error can go unseen) and remove them
    after this module."""
    path = content.mounts[1] / "big" / "archive.bin"
    path.parent.mkdir(exist_ok=True)
    path.parent.chmod(0o755)
    digest = hashlib.sha256()
    with open(path, "wb") as out:
        for _ in range(BIG_SIZE_BYTES // (4 * MIB)):
            block = os.urandom(4 * MIB)
            digest.update(block)
            out.write(block)
    try:
        yield BigFile(name="big/archive.bin", sha256=digest.hexdigest())
    finally:
        path.unlink(missing_ok=True)


class RssSampler:
    """Samples the RSS of some processes every 20 ms in a thread, keeping each one's peak.

    Args:
        pids: the processes to watch.
    """

    def __init__(self, pids: list[int]) -> None:
        self.baseline = {pid: rss_bytes(pid, if_gone=0) for pid in pids}
        self.peak = dict(self.baseline)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            for pid in self.peak:
                self.peak[pid] = max(self.peak[pid], rss_bytes(pid, if_gone=0))

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def growth(self) -> dict[int, int]:
        """Return each process's peak RSS minus its RSS before, in bytes."""
        return {pid: self.peak[pid] - self.baseline[pid] for pid in self.peak}


def test_256_mib_stream_through_apache_with_flat_memory(front: Front, big_file: BigFile) -> None:
    """256 MiB arrive byte-exact through Apache over TLS, and neither Apache's processes nor
    vend's grow by more than 48 MiB, even when the client stops reading for 1.5 s after the
    first 16 MiB (a proxy that buffered the file would grow by up to 240 MiB then)."""
    # Warm both up so that first-request allocations do not count as growth.
    with front_client(front.pki.ca_pem) as client:
        assert client.get(front.url("/index.html")).status_code == 200
    pids = [*front.apache.pids(), front.vend.process.pid]
    digest = hashlib.sha256()
    received = 0
    with (
        RssSampler(pids) as sampler,
        front_client(front.pki.ca_pem) as client,
        client.stream("GET", front.url(f"/{big_file.name}")) as response,
    ):
        assert response.status_code == 200
        assert response.headers["content-length"] == str(BIG_SIZE_BYTES)
        paused = False
        for chunk in response.iter_raw(256 * 1024):
            digest.update(chunk)
            received += len(chunk)
            if not paused and received >= 16 * MIB:
                paused = True
                time.sleep(1.5)
    assert received == BIG_SIZE_BYTES
    assert digest.hexdigest() == big_file.sha256
    growth = sampler.growth()
    assert max(growth.values()) < RSS_GROWTH_LIMIT_BYTES, {
        pid: f"{grown / MIB:.1f} MiB" for pid, grown in growth.items()
    }

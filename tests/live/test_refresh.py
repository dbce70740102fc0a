"""Revalidating hot cache entries in batches (app.federation.refresh), on real files."""

from __future__ import annotations

import asyncio
import os
import re
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

from app.federation.cache import CachedFile, NameCache
from app.federation.memory import NameMemory
from app.federation.mount import Mount, build_mounts
from app.federation.open import Lookup, SmallFile, check_names
from app.federation.refresh import BATCH_NAMES, Refresher
from app.http.responses import make_representation
from app.settings import MountSettings

pytestmark = pytest.mark.live

TTL_S = 2.0
T = TypeVar("T")


class Federation:
    """Three real mounts under ``tmp_path``, a name cache and its refresher."""

    def __init__(
        self, tmp_path: Path, mounts: list[Mount], directories_absent: bool = True
    ) -> None:
        self.roots = [tmp_path / f"m{i}" for i in (1, 2, 3)]
        self.mounts = mounts
        self.cache = NameCache(
            ttl_s=TTL_S, miss_ttl_s=1, max_entries=100, max_bytes=1 << 20, max_file_bytes=64
        )
        self.memory = NameMemory(max_names=100, ttl_s=600)
        self.memory.configure((100, 600), (mount.key for mount in mounts))
        self.refresher = Refresher(
            self.cache, mounts, self.memory, directories_absent=directories_absent
        )

    def cache_file(self, name: str, on: int, body: bytes) -> CachedFile:
        """Write ``body`` as ``name`` on mount ``on`` (0-based) and cache it as a lookup would."""
        path = self.roots[on] / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(body)
        st = path.stat()
        rep = make_representation(st.st_size, st.st_mtime_ns, "text/plain", "no-cache")
        return self.cache.put_file(name, self.mounts[on], rep, body, time.monotonic())

    async def revalidate(self, *entries: tuple[str, CachedFile]) -> set[str]:
        """Revalidate these entries; the names confirmed."""
        before = {name: entry.checked_at for name, entry in entries}
        await self.refresher.revalidate(dict(entries))
        return {name for name, entry in entries if entry.checked_at != before[name]}


def run(tmp_path: Path, scenario: Callable[[Federation], Awaitable[T]], **kwargs: Any) -> T:
    """Run ``scenario`` on a fresh ``Federation`` (its mounts probed), closing its mounts after."""

    async def main() -> T:
        roots = [tmp_path / f"m{i}" for i in (1, 2, 3)]
        for root in roots:
            root.mkdir(parents=True, exist_ok=True)
        mounts = build_mounts([MountSettings(path=root) for root in roots], fs_op_s=5.0, threads=2)
        try:
            for mount in mounts:
                assert await mount.probe()
            return await scenario(Federation(tmp_path, mounts, **kwargs))
        finally:
            for mount in mounts:
                mount.close()

    return asyncio.run(main())


def test_unchanged_hot_files_are_confirmed_in_one_batch(tmp_path: Path) -> None:
    """Unchanged small files on each mount are trusted anew from the revalidation's start."""
    run(tmp_path, _unchanged)


async def _unchanged(fed: Federation) -> None:
    entries = [
        (f"d/n{i}.txt", fed.cache_file(f"d/n{i}.txt", i % 3, b"body %d" % i)) for i in range(30)
    ]
    started = time.monotonic()
    assert await fed.revalidate(*entries) == {name for name, _ in entries}
    for name, entry in entries:
        assert started <= entry.checked_at <= time.monotonic()
        assert not entry.due
        assert fed.memory.where(name) == entry.mount.key
        assert fed.cache.get(name, entry.checked_at + TTL_S - 0.01) is entry


def test_nothing_is_confirmed_that_a_lookup_would_not_give(tmp_path: Path) -> None:
    """A change of bytes, validators, shadowing, type, size or containment is never confirmed."""
    run(tmp_path, _changed)


async def _changed(fed: Federation) -> None:
    tmp_path = fed.roots[0].parent
    m1, m2, m3 = fed.roots
    same = ("same.txt", fed.cache_file("same.txt", 2, b"unchanged"))
    rewritten = ("rewritten.txt", fed.cache_file("rewritten.txt", 2, b"old bytes"))
    st = (m3 / "rewritten.txt").stat()
    (m3 / "rewritten.txt").write_bytes(b"new bytes")  # same size, same times put back
    os.utime(m3 / "rewritten.txt", ns=(st.st_atime_ns, st.st_mtime_ns))
    touched = ("touched.txt", fed.cache_file("touched.txt", 2, b"bytes"))
    os.utime(m3 / "touched.txt", ns=(0, st.st_mtime_ns - 10**9))
    shadowed = ("shadowed.txt", fed.cache_file("shadowed.txt", 2, b"on m3"))
    (m1 / "shadowed.txt").write_bytes(b"a new copy on m1")
    deleted = ("deleted.txt", fed.cache_file("deleted.txt", 1, b"gone soon"))
    (m2 / "deleted.txt").unlink()
    grown = ("grown.txt", fed.cache_file("grown.txt", 0, b"small"))
    (m1 / "grown.txt").write_bytes(b"x" * 65)  # past max_file_bytes
    outside = tmp_path / "outside.txt"
    outside.write_bytes(b"secret")
    escaped = ("escaped.txt", fed.cache_file("escaped.txt", 1, b"secret"))
    (m2 / "escaped.txt").unlink()
    (m2 / "escaped.txt").symlink_to(outside)  # same bytes, but outside the mount
    fifo = ("fifo.txt", fed.cache_file("fifo.txt", 0, b"a file"))
    (m1 / "fifo.txt").unlink()
    os.mkfifo(m1 / "fifo.txt")
    replaced = ("replaced.txt", fed.cache_file("replaced.txt", 2, b"first"))
    fed.cache_file("replaced.txt", 2, b"first")  # a request's lookup stored a new entry
    future = ("future.txt", fed.cache_file("future.txt", 0, b"from the future"))
    os.utime(m1 / "future.txt", ns=(0, time.time_ns() + 3600 * 10**9))
    confirmed = await fed.revalidate(
        same, rewritten, touched, shadowed, deleted, grown, escaped, fifo, replaced, future
    )
    assert confirmed == {"same.txt"}
    for name, entry in (rewritten, touched, shadowed, deleted, grown, escaped, fifo):
        assert entry.due is False  # left alone: it goes stale at its time
        assert fed.cache.get(name, entry.checked_at + TTL_S) is None


def test_a_directory_on_an_earlier_mount_shadows_only_with_index_names(tmp_path: Path) -> None:
    """A directory on an earlier mount is absent to a lookup without index_names, a redirect with."""

    async def scenario(fed: Federation) -> set[str]:
        entry = ("page", fed.cache_file("page", 2, b"a page"))
        (fed.roots[0] / "page").mkdir(exist_ok=True)
        return await fed.revalidate(entry)

    assert run(tmp_path / "without", scenario, directories_absent=True) == {"page"}
    assert run(tmp_path / "with", scenario, directories_absent=False) == set()


def test_a_down_mount_confirms_nothing_behind_it(tmp_path: Path) -> None:
    """With an earlier mount down (breaker open) the entries behind it go stale as before."""

    async def scenario(fed: Federation) -> set[str]:
        on_m1 = ("a.txt", fed.cache_file("a.txt", 0, b"on m1"))
        on_m3 = ("b.txt", fed.cache_file("b.txt", 2, b"on m3"))
        fed.mounts[1].mark_down("EIO")
        return await fed.revalidate(on_m1, on_m3)

    assert run(tmp_path, scenario) == {"a.txt"}


def test_entries_used_late_in_their_ttl_are_handed_over_once(tmp_path: Path) -> None:
    """The cache hands an entry used past 3/4 of its TTL to the refresher once, which confirms it."""
    run(tmp_path, _handed_over)


async def _handed_over(fed: Federation) -> None:
    entry = fed.cache_file("hot.txt", 2, b"hot")
    first = entry.checked_at
    assert fed.cache.get("hot.txt", first + TTL_S / 2) is entry
    assert not entry.due
    assert fed.cache.get("hot.txt", first + TTL_S * 0.8) is entry
    assert entry.due
    deadline = time.monotonic() + 5.0
    while entry.checked_at == first and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    assert entry.checked_at > first and not entry.due
    assert fed.refresher.confirmed == 1
    fed.refresher.close()
    assert fed.cache.get("hot.txt", entry.checked_at + TTL_S * 0.8) is entry
    assert not entry.due  # closed: no longer handed over


def test_a_hammered_name_is_looked_up_once_not_every_ttl(tmp_path: Path, start_vend: Any) -> None:
    """A name asked for again and again over several TTLs costs one mount lookup, not one a TTL."""
    mount = tmp_path / "m1"
    mount.mkdir()
    (mount / "hot.css").write_bytes(b"body { color: red }")
    proc = start_vend([str(mount)])
    with proc.client() as client:
        deadline = time.monotonic() + 3 * TTL_S
        asked = 0
        while time.monotonic() < deadline and asked < 2000:
            response = client.get("/hot.css")
            assert response.status_code == 200 and response.content == b"body { color: red }"
            asked += 1
            time.sleep(0.01)
        metrics = client.get("/.well-known/vend/metrics").text
    hits = re.search(r'^vend_mount_lookups_total\{mount="m1",outcome="hit"\} (\S+)$', metrics, re.M)
    assert hits is not None and float(hits.group(1)) == 1.0, metrics
    confirmed = re.search(
        r'^vend_cache_revalidations_total\{outcome="confirmed"\} (\S+)$', metrics, re.M
    )
    assert confirmed is not None and float(confirmed.group(1)) >= 2.0, metrics


def test_a_revalidation_of_many_names_leaves_room_for_requests(tmp_path: Path) -> None:
    """Revalidating thousands of hot names never fills a mount's queue: a request's lookup still runs."""

    async def main() -> object:
        root = tmp_path / "m1"
        root.mkdir()
        (root / "cold.txt").write_bytes(b"cold")
        [mount] = build_mounts([MountSettings(path=root)], fs_op_s=5.0, threads=1)
        gate = threading.Event()
        try:
            assert await mount.probe()
            cache = NameCache(
                ttl_s=TTL_S, miss_ttl_s=1, max_entries=10, max_bytes=1 << 20, max_file_bytes=64
            )
            memory = NameMemory(max_names=10, ttl_s=600)
            refresher = Refresher(cache, [mount], memory, directories_absent=True)
            rep = make_representation(3, 0, "text/plain", "no-cache")
            now = time.monotonic()
            due = {
                f"hot{i}.txt": CachedFile(mount=mount, rep=rep, body=b"hot", checked_at=now)
                for i in range(70 * BATCH_NAMES)  # past the 64 calls a 1-thread mount queues
            }
            mount.executor.submit(gate.wait, 10.0)  # its one thread busy: calls queue up
            revalidation = asyncio.ensure_future(refresher.revalidate(due))
            for _ in range(3):
                await asyncio.sleep(0)
            lookup = asyncio.ensure_future(mount.lookup("cold.txt", 64))
            await asyncio.sleep(0.05)
            gate.set()
            found = await asyncio.wait_for(lookup, 10.0)
            await asyncio.wait_for(revalidation, 10.0)
            return found
        finally:
            gate.set()
            mount.close()

    found = asyncio.run(main())
    assert isinstance(found, SmallFile) and found.body == b"cold"


def test_names_not_reached_before_the_deadline_are_not_looked_up(tmp_path: Path) -> None:
    """A revalidation call stops at its deadline: the names after it are not looked up."""
    (tmp_path / "a.txt").write_bytes(b"a")
    names = [("a.txt", True), ("missing.txt", True)]
    mount: Any = object()
    root = str(tmp_path.resolve())
    late = check_names(root, names, mount, 64, None, time.monotonic() - 1.0)
    assert late == [None, None]
    found = check_names(root, names, mount, 64, None, time.monotonic() + 60.0)
    assert isinstance(found[0], SmallFile) and found[0].body == b"a"
    assert found[1] is Lookup.ABSENT

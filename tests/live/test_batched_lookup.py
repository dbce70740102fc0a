"""The batched lookup (``app.federation.batch``): what it could get wrong, on real files.

Many searches made in one turn of the loop share one call per mount; these check that
each still gets the answer a lookup of its own would give, that a file changed on an
earlier mount is seen by the next search, and that searches cancelled at any point
leave no descriptor open.
"""

from __future__ import annotations

import asyncio
import gc
import os
from collections import Counter
from pathlib import Path

from app.federation.lookup import Miss, find_file
from app.federation.mount import Mount, build_mounts
from app.federation.open import OpenFile, SmallFile
from app.settings import MountSettings

BIG = 64 * 1024  # above max_read_bytes below: answered as an open file


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def _mounts(tmp_path: Path, count: int) -> list[Mount]:
    roots = [tmp_path / f"m{i}" for i in range(1, count + 1)]
    for root in roots:
        root.mkdir(exist_ok=True)
    mounts = build_mounts([MountSettings(path=r) for r in roots], fs_op_s=5.0, threads=4)
    for mount in mounts:
        assert await mount.probe()
    return mounts


async def _settled(mounts: list[Mount]) -> None:
    """Wait (bounded) until no mount has a call in flight."""
    for _ in range(500):
        if all(m.pace.in_flight == 0 for m in mounts):
            return
        await asyncio.sleep(0.01)
    raise AssertionError([m.pace.in_flight for m in mounts])


def _body(found: object) -> bytes:
    if isinstance(found, SmallFile):
        return found.body
    assert isinstance(found, OpenFile), found
    try:
        return os.pread(found.fd, found.size + 1, 0)
    finally:
        found.close()


def test_a_burst_of_names_gets_each_name_from_its_first_mount(tmp_path: Path) -> None:
    """300 searches at once over three mounts: each gets the first mount's copy, or 404."""

    async def main() -> None:
        mounts = await _mounts(tmp_path, 3)
        try:
            for i in range(300):
                for j in range(i % 4, 3):  # name i on mounts i%4.. (none when i%4 == 3)
                    (tmp_path / f"m{j + 1}" / f"n{i}").write_bytes(b"m%d n%d" % (j + 1, i))
            found = await asyncio.gather(
                *(
                    find_file(mounts, [f"n{i}"], redirect_directories=False, max_read_bytes=64)
                    for i in range(300)
                )
            )
            for i, result in enumerate(found):
                if i % 4 == 3:
                    assert result is Miss.NOT_FOUND, (i, result)
                else:
                    assert _body(result) == b"m%d n%d" % (i % 4 + 1, i), i
            assert all(m.up for m in mounts)
        finally:
            for mount in mounts:
                mount.close()

    asyncio.run(main())


def test_a_change_on_an_earlier_mount_is_seen_by_the_next_search(tmp_path: Path) -> None:
    """Added on mount 1 (shadowing mount 2), replaced, deleted: each next search sees it."""

    async def main() -> None:
        mounts = await _mounts(tmp_path, 2)
        m1, m2 = tmp_path / "m1" / "page", tmp_path / "m2" / "page"

        async def served() -> bytes | Miss:
            found = await find_file(mounts, ["page"], redirect_directories=False, max_read_bytes=64)
            return found if isinstance(found, Miss) else _body(found)

        try:
            m2.write_bytes(b"old copy")
            assert await served() == b"old copy"
            m1.write_bytes(b"new copy")
            assert await served() == b"new copy"
            m1.write_bytes(b"replaced")
            assert await served() == b"replaced"
            m1.unlink()
            assert await served() == b"old copy"
            m2.unlink()
            assert await served() is Miss.NOT_FOUND
        finally:
            for mount in mounts:
                mount.close()

    asyncio.run(main())


def test_cancelled_searches_leave_no_descriptor_open(tmp_path: Path) -> None:
    """Searches for large files (open descriptors) cancelled before their batch is sent,
    while it runs, and after the verdict: /proc/self/fd is as before."""

    async def main() -> None:
        mounts = await _mounts(tmp_path, 2)
        try:
            for i in range(200):
                (tmp_path / "m1" / f"big{i}").write_bytes(b"x" * BIG)
                (tmp_path / "m2" / f"big{i}").write_bytes(b"y" * BIG)
            before = _open_fds()
            for when in range(4):  # cancel after 0, 1, 2 and 3 turns of the loop
                tasks = [
                    asyncio.ensure_future(
                        find_file(
                            mounts, [f"big{i}"], redirect_directories=False, max_read_bytes=64
                        )
                    )
                    for i in range(200)
                ]
                for _ in range(when):
                    await asyncio.sleep(0)
                for task in tasks:
                    task.cancel()
                results = await asyncio.gather(*tasks, return_exceptions=True)
                for result in results:
                    if isinstance(result, OpenFile):
                        result.close()  # finished before the cancel reached it: ours
                await _settled(mounts)
                assert _open_fds() == before, when
        finally:
            for mount in mounts:
                mount.close()

    asyncio.run(main())


def test_searches_leave_no_cycles_for_the_collector(tmp_path: Path) -> None:
    """A search's asks, its batches and what they found are freed by their reference
    counts as soon as the verdicts are in: on a long tail thousands are made a second,
    and left in reference cycles they waited for the collector, whose passes over them
    took tens of ms (the p99) and held their small files' bytes meanwhile."""

    async def main() -> None:
        mounts = await _mounts(tmp_path, 3)
        try:
            for i in range(200):
                (tmp_path / f"m{i % 3 + 1}" / f"n{i}").write_bytes(b"n%d" % i)
            await find_file(mounts, ["n0"], redirect_directories=False, max_read_bytes=64)
            await _settled(mounts)
            gc.collect()
            gc.disable()
            try:
                gc.set_debug(gc.DEBUG_SAVEALL)
                found = await asyncio.gather(
                    *(
                        find_file(mounts, [f"n{i}"], redirect_directories=False, max_read_bytes=64)
                        for i in range(200)
                    )
                )
                assert [_body(f) for f in found] == [b"n%d" % i for i in range(200)]
                del found
                await _settled(mounts)
                await asyncio.sleep(0)  # the batches' completions ran; let their callbacks
                gc.collect()
                left = Counter(type(o).__name__ for o in gc.garbage)
            finally:
                gc.set_debug(0)
                gc.garbage.clear()
                gc.enable()
            lookup_types = ("Ask", "Batch", "Search", "SmallFile", "OpenFile")
            assert {t: left[t] for t in lookup_types if left[t]} == {}
        finally:
            for mount in mounts:
                mount.close()

    asyncio.run(main())

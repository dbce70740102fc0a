"""Memory vend holds for what it serves: a small file's read, the hot path's answers, and
what a cache entry keeps for the cyclic collector.

Each test measures what a load like the benchmark's (``benchmarks/compare``: many names,
or many connections starting on one name) makes vend allocate or keep, and holds it to
a stated bound: the buffer a small file is read into, and the whole answers the hot path
keeps built for the current second (``MAX_READY_BYTES``).
"""

from __future__ import annotations

import gc
import os
import tracemalloc
from pathlib import Path

from app.federation.open import SmallFile, open_in_mount
from app.server.hotpath import MAX_READY_BYTES, Prebuilt
from tests.unit.memory_transport import Server, make_tree, parse_responses, run_with_server

FILES = 40
FILE_BYTES = 64 * 1024


def _get(target: bytes) -> bytes:
    return b"GET " + target + b" HTTP/1.1\r\nHost: t\r\n\r\n"


def test_small_file_is_read_into_a_buffer_of_its_own_size(tmp_path: Path) -> None:
    """A 4 KiB file read whole with a 256 KiB limit allocates about 4 KiB, not the limit."""
    body = os.urandom(4096)
    (tmp_path / "small.bin").write_bytes(body)
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        before = tracemalloc.get_traced_memory()[0]
        # The mount is only recorded in the result: none is needed to read.
        found = open_in_mount(str(tmp_path), "small.bin", None, max_read_bytes=256 * 1024)  # type: ignore[arg-type]
        peak = tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()
    assert isinstance(found, SmallFile) and found.body == body
    assert peak < 64 * 1024, f"{peak} bytes allocated at the peak"


def test_files_at_their_size_or_past_the_limit_are_read_whole_or_left_open(tmp_path: Path) -> None:
    """A file of exactly the limit is read whole; one byte more is left to the descriptor."""
    (tmp_path / "at.bin").write_bytes(b"a" * 1000)
    (tmp_path / "over.bin").write_bytes(b"a" * 1001)
    (tmp_path / "empty.bin").write_bytes(b"")
    at = open_in_mount(str(tmp_path), "at.bin", None, max_read_bytes=1000)  # type: ignore[arg-type]
    over = open_in_mount(str(tmp_path), "over.bin", None, max_read_bytes=1000)  # type: ignore[arg-type]
    empty = open_in_mount(str(tmp_path), "empty.bin", None, max_read_bytes=1000)  # type: ignore[arg-type]
    assert isinstance(at, SmallFile) and at.body == b"a" * 1000
    assert isinstance(empty, SmallFile) and empty.body == b""
    assert not isinstance(over, SmallFile)
    over.close()  # type: ignore[union-attr]


def _ready_answer_bytes(bodies: list[bytes]) -> int:
    """Bytes of whole answers the live ``Prebuilt`` of these bodies keep built for their second."""
    gc.collect()
    ours = set(bodies)  # other tests' answers may still be alive: not counted
    return sum(
        len(o.get_answer) for o in gc.get_objects() if isinstance(o, Prebuilt) and o.body in ours
    )


def test_answers_kept_for_the_second_stay_within_their_bound(tmp_path: Path) -> None:
    """Forty hot 64 KiB files (2.5 MiB) asked in one second: at most MAX_READY_BYTES of
    whole answers kept, and every answer past it still whole and right."""
    mounts = make_tree(tmp_path)
    many = mounts[0] / "many"
    many.mkdir()
    bodies = [os.urandom(FILE_BYTES) for _ in range(FILES)]
    for i, body in enumerate(bodies):
        (many / f"f{i}.bin").write_bytes(body)
    assert FILES * FILE_BYTES > MAX_READY_BYTES

    async def scenario(server: Server) -> None:
        conn = server.connect()
        for i in range(FILES):  # into the cache, through the application
            await conn.send(_get(b"/many/f%d.bin" % i))
            await conn.wait_responses(["GET"] * (i + 1), timeout_s=20)
        conn.transport.out.clear()
        for i in range(FILES):  # the hot path answers each
            await conn.send(_get(b"/many/f%d.bin" % i))
        answers = parse_responses(bytes(conn.transport.out), ["GET"] * FILES)
        assert [a.status for a in answers] == [200] * FILES
        assert [a.body for a in answers] == bodies
        assert _ready_answer_bytes(bodies) <= MAX_READY_BYTES

    run_with_server(scenario, mounts, cache={"ttl_s": 3, "max_bytes": 8 * 1024 * 1024})


def _tracked_below(root: object, shared: set[int]) -> list[str]:
    """Types of the objects the cyclic collector tracks that ``root`` holds, itself
    included, not following into classes or ``shared`` (objects every entry shares)."""
    seen: set[int] = set()
    kinds: list[str] = []
    todo = [root]
    while todo:
        obj = todo.pop()
        if id(obj) in seen or id(obj) in shared or isinstance(obj, type):
            continue
        if not gc.is_tracked(obj):
            continue
        seen.add(id(obj))
        kinds.append(type(obj).__name__)
        todo.extend(gc.get_referents(obj))
    return kinds


def test_a_cached_name_is_two_objects_for_the_collector(tmp_path: Path) -> None:
    """Each cache entry of a small file found on the cold path holds two objects the
    cyclic collector tracks, the entry and its representation: on a long tail every
    collection scans every young entry, and the validators and field tuples an entry
    once kept as objects were most of its pauses (p99 twice as high)."""
    mounts = make_tree(tmp_path)
    many = mounts[0] / "many"
    many.mkdir()
    for i in range(FILES):
        (many / f"f{i}.bin").write_bytes(b"%d" % i * 100)

    async def scenario(server: Server) -> None:
        conn = server.connect()
        for i in range(FILES):
            await conn.send(_get(b"/many/f%d.bin" % i))
        answers = await conn.wait_responses(["GET"] * FILES, timeout_s=20)
        assert [a.body for a in answers] == [b"%d" % i * 100 for i in range(FILES)]
        cache = server.app.cache
        shared = {id(mount) for mount in server.app.mounts}
        for i in range(FILES):
            entry = cache.get(f"many/f{i}.bin", 0.0)
            assert entry is not None and getattr(entry, "body", None) == b"%d" % i * 100
            assert sorted(_tracked_below(entry, shared)) == ["CachedFile", "Representation"]

    run_with_server(scenario, mounts)

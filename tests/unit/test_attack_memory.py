"""Memory an attacker can make the hot path hold, on an in-memory transport.

The hot path remembers the request-targets it answered (so that a target seen before
skips the name checks). Each test sends raw request bytes as a hostile client would and
measures what stays in memory afterwards: the bodies of files the name cache already
let go of (``cache.max_bytes``), and the bytes of the targets themselves.
"""

from __future__ import annotations

import gc
import os
import tracemalloc
from pathlib import Path

from app.federation.cache import CachedFile
from tests.unit.memory_transport import Server, make_tree, parse_responses, run_with_server

FILES = 40
FILE_BYTES = 64 * 1024
MAX_BYTES = 4 * FILE_BYTES


def _get(target: bytes) -> bytes:
    return b"GET " + target + b" HTTP/1.1\r\nHost: t\r\n\r\n"


def _live_body_bytes() -> int:
    """Bytes of file bodies held by every CachedFile still alive in the process."""
    gc.collect()
    return sum(
        len(o.body) for o in gc.get_objects() if isinstance(o, CachedFile) and o.body is not None
    )


def test_hot_path_keeps_no_body_the_name_cache_let_go(tmp_path: Path) -> None:
    """Forty 64 KiB files each asked twice, cache.max_bytes 256 KiB: live bodies stay within it."""
    mounts = make_tree(tmp_path)
    many = mounts[0] / "many"
    many.mkdir()
    for i in range(FILES):
        (many / f"f{i}.bin").write_bytes(os.urandom(FILE_BYTES))

    async def scenario(server: Server) -> None:
        conn = server.connect()
        for i in range(FILES):
            target = b"/many/f%d.bin" % i
            await conn.send(_get(target))
            await conn.wait_responses(["GET"] * (2 * i + 1), timeout_s=20)
            await conn.send(_get(target))  # now in the cache: the hot path answers it
            await conn.wait_responses(["GET"] * (2 * i + 2), timeout_s=20)
        answers = parse_responses(bytes(conn.transport.out), ["GET"] * 2 * FILES)
        assert [a.status for a in answers] == [200] * 2 * FILES
        conn.transport.out.clear()
        assert server.app.cache.body_bytes <= MAX_BYTES
        assert _live_body_bytes() <= MAX_BYTES + FILE_BYTES

    run_with_server(scenario, mounts, cache={"ttl_s": 3, "max_bytes": MAX_BYTES})


def test_distinct_long_targets_do_not_grow_the_hot_paths_memory(tmp_path: Path) -> None:
    """Two thousand targets with distinct 8,000-byte queries for one hot file: under 8 MiB kept."""
    mounts = make_tree(tmp_path)

    async def scenario(server: Server) -> None:
        warm = server.connect()
        await warm.send(_get(b"/small.txt"))
        await warm.wait_responses(["GET"])
        conn = server.connect()
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        for batch in range(100):
            await conn.send(
                b"".join(_get(b"/small.txt?" + os.urandom(4000).hex().encode()) for _ in range(20))
            )
            assert conn.transport.out.count(b"HTTP/1.1 200 OK") == 20, batch
            conn.transport.out.clear()
        gc.collect()
        kept = tracemalloc.get_traced_memory()[0] - before
        tracemalloc.stop()
        assert kept < 8 * 1024 * 1024, f"{kept} bytes kept"

    run_with_server(scenario, mounts, cache={"ttl_s": 3})


def test_remembered_heads_stay_small_whatever_their_fields(tmp_path: Path) -> None:
    """4,096 distinct 2 KiB heads of 100 short fields each, for a hot file: under 16 MiB kept."""
    mounts = make_tree(tmp_path)
    fields = b"".join(b"%c:%d\r\n" % (97 + j % 26, j) for j in range(98))

    async def scenario(server: Server) -> None:
        conn = server.connect()
        await conn.send(_get(b"/small.txt"))
        await conn.wait_responses(["GET"])
        conn.transport.out.clear()
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        for i in range(4096):  # each alone in its read, as the remembered heads want
            head = b"GET /small.txt HTTP/1.1\r\nHost: t\r\nX:%08d\r\n" % i + fields + b"\r\n"
            assert len(head) <= 2048
            await conn.send(head)
            # From memory at once; through the application when the 3 s cache entry
            # went stale meanwhile (a loaded machine): either way one whole 200.
            (response,) = await conn.wait_responses(["GET"])
            assert response.status == 200, i
            conn.transport.out.clear()
        gc.collect()
        kept = tracemalloc.get_traced_memory()[0] - before
        tracemalloc.stop()
        assert kept < 16 * 1024 * 1024, f"{kept} bytes kept"

    run_with_server(scenario, mounts, cache={"ttl_s": 3})

"""The memory of where names live: bounds, expiry, reloads, sharing (app.federation.memory)."""

from __future__ import annotations

import multiprocessing
import os
import time
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from app.federation.memory import FILE_NAME, HEADER_BYTES, MAX_IDS, NameMemory, table_bytes
from tests.support import rss_bytes


def test_remember_where_forget() -> None:
    """A remembered name gives its mount's key back until forgotten or overwritten."""
    memory = NameMemory(max_names=10, ttl_s=3600)
    memory.configure((10, 3600.0), ["/m1", "/m2"])
    memory.remember("a.html", "/m1", now=0.0)
    assert memory.where("a.html", now=1.0) == "/m1"
    memory.remember("a.html", "/m2", now=2.0)
    assert memory.where("a.html", now=3.0) == "/m2"
    assert memory.count(now=3.0) == 1
    memory.forget("a.html")
    assert memory.where("a.html", now=4.0) is None
    assert memory.where("never.html", now=4.0) is None


def test_a_name_is_kept_for_ttl_and_at_most_two_minutes_longer() -> None:
    """An entry is found for remember_s seconds after the name was last served, and gone
    two minutes after that (minute stamps)."""
    memory = NameMemory(max_names=100, ttl_s=600)
    memory.configure((100, 600.0), ["/m1"])
    start = 60_000.0
    memory.remember("a", "/m1", now=start + 59)
    assert memory.where("a", now=start + 59 + 600) == "/m1"
    assert memory.where("a", now=start + 59 + 600 + 121) is None
    memory.remember("a", "/m1", now=start + 59 + 600 + 121)  # served again: kept again
    assert memory.where("a", now=start + 59 + 1200) == "/m1"


def test_reload_drops_entries_of_removed_mounts_only() -> None:
    """configure() with a new mount table forgets removed mounts' names, keeps the others',
    whatever the new order."""
    memory = NameMemory(max_names=10, ttl_s=3600)
    memory.configure((10, 3600.0), ["/m1", "/m2"])
    memory.remember("on-1", "/m1")
    memory.remember("on-2", "/m2")
    memory.configure((10, 3600.0), ["/m3", "/m2"])
    assert memory.where("on-1") is None
    assert memory.where("on-2") == "/m2"
    memory.remember("gone", "/m1")  # a request from before the reload: not kept
    assert memory.where("gone") is None
    memory.configure((10, 3600.0), ["/m1", "/m2"])  # /m1 back: a new mount, nothing known
    assert memory.where("on-1") is None
    memory.remember("x", "/m1")
    assert memory.where("x") == "/m1"


def test_running_out_of_mount_ids_restarts_the_memory() -> None:
    """After 255 mount ids, the table starts again empty and keeps working."""
    memory = NameMemory(max_names=10, ttl_s=3600)
    for i in range(MAX_IDS + 3):
        memory.configure((10, 3600.0), [f"/m{i}"])
        memory.remember(f"n{i}", f"/m{i}")
        assert memory.where(f"n{i}") == f"/m{i}"


def test_half_a_million_names_fit_the_stated_bound() -> None:
    """500,000 names served within remember_s are all remembered, in a table of 16 bytes a
    name (8 MB; the process's resident memory grows by under 100 MiB)."""
    rss_before = rss_bytes(os.getpid())
    memory = NameMemory(max_names=500_000, ttl_s=3600)
    memory.configure((500_000, 3600.0), ["/server1/content", "/server2/content"])
    assert memory.size_bytes == table_bytes(500_000) < 8_100_000
    for i in range(500_000):
        memory.remember(f"some/old/link/number-{i}.html", f"/server{i % 2 + 1}/content", now=1.0)
    assert memory.count(now=3000.0) == 500_000
    assert rss_bytes(os.getpid()) - rss_before < 100 * 1024 * 1024
    missing = [
        i
        for i in range(500_000)
        if memory.where(f"some/old/link/number-{i}.html", now=3000.0)
        != f"/server{i % 2 + 1}/content"
    ]
    assert missing == []


def _serve_names(directory: str, first: int, count: int) -> None:
    memory = NameMemory(max_names=50_000, ttl_s=3600, directory=directory)
    memory.configure((50_000, 3600.0), ["/m1", "/m2"])
    for i in range(first, first + count):
        memory.remember(f"name-{i}", "/m1" if i % 3 else "/m2")
    memory.close()


def test_processes_share_one_table(tmp_path: Path) -> None:
    """Four processes remembering names at once into the shared file lose none, and a
    fifth process (a worker started later) sees them all."""
    ctx = multiprocessing.get_context("spawn")
    procs = [
        ctx.Process(target=_serve_names, args=(str(tmp_path), k * 5000, 5000)) for k in range(4)
    ]
    for proc in procs:
        proc.start()
    deadline = time.monotonic() + 120
    for proc in procs:
        proc.join(timeout=max(1.0, deadline - time.monotonic()))
        assert proc.exitcode == 0
    assert (tmp_path / FILE_NAME).stat().st_size == table_bytes(50_000)
    memory = NameMemory(max_names=50_000, ttl_s=3600, directory=str(tmp_path))
    memory.configure((50_000, 3600.0), ["/m2", "/m1"])  # reordered: same mounts
    assert [i for i in range(20_000) if memory.where(f"name-{i}") is None] == []
    assert memory.where("name-3") == "/m2" and memory.where("name-4") == "/m1"
    assert len(memory) == 20_000
    memory.close()


_OPS = st.lists(
    st.tuples(
        st.sampled_from(["remember", "forget"]),
        st.integers(min_value=0, max_value=40),  # name
        st.sampled_from(["/m1", "/m2"]),
        st.sampled_from([0] * 14 + [1, 12]),  # minutes since the step before
    ),
    min_size=20,
    max_size=200,
)


@settings(max_examples=300, deadline=None)
@given(_OPS)
def test_slots_are_chosen_as_documented(ops: list[tuple[str, int, str, int]]) -> None:
    """Against a model of the documented slot rules, on a table of two buckets (16 slots,
    41 names: buckets fill up, entries expire and give way): a name keeps its own slot;
    a new one takes the first empty or expired slot of the emptier of its two buckets
    (the first on a tie), else the oldest entry of both; ``where`` finds exactly the
    names the model holds, on the mount that last served them; every slot holds the
    model's word."""
    ttl_s = 600.0
    memory = NameMemory(max_names=8, ttl_s=ttl_s)
    memory.configure((8, ttl_s), ["/m1", "/m2"])
    model: dict[int, tuple[str, int, str]] = {}  # slot index -> (name, minute, mount)
    minute = 1000

    def fresh(at: int) -> bool:
        return (minute - at) * 60 < ttl_s + 60

    for op, number, mount, step in ops:
        minute += step
        name = f"n{number}.html"
        one, two, _ = memory._slots(name)
        if op == "forget":
            memory.forget(name)
            model = {i: e for i, e in model.items() if e[0] != name}
            continue
        memory.remember(name, mount, now=minute * 60.0)
        own = [i for i in (*one, *two) if i in model and model[i][0] == name]
        if own:
            target = own[0]
        else:
            free = [
                [i for i in bucket if i not in model or not fresh(model[i][1])]
                for bucket in (one, two)
            ]
            if free[0] or free[1]:
                target = (free[0] if len(free[0]) >= len(free[1]) else free[1])[0]
            else:
                target = max((*one, *two), key=lambda i: minute - model[i][1])
        model[target] = (name, minute, mount)
        for index in range(HEADER_BYTES // 8, len(memory._words)):
            if index not in model:
                assert memory._words[index] == 0
                continue
            held_name, at, held_mount = model[index]
            tag = memory._slots(held_name)[2]
            mount_id = memory._ids[held_mount]
            word = 1 << 63 | (at & 0xFFFFF) << 43 | mount_id << 35 | tag
            assert memory._words[index] == word
        for number_seen in range(41):
            seen = f"n{number_seen}.html"
            held = [e for e in model.values() if e[0] == seen and fresh(e[1])]
            assert memory.where(seen, now=minute * 60.0) == (held[0][2] if held else None)

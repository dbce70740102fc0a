"""The memory of where names live: bounds, generations, reloads (app.federation.memory)."""

from __future__ import annotations

import gc
import tracemalloc

from app.federation.memory import NameMemory


def test_remember_where_forget() -> None:
    """A remembered name gives its mount's key back until forgotten or overwritten."""
    memory = NameMemory(max_names=10, ttl_s=3600)
    memory.remember("a.html", "/m1", now=0.0)
    assert memory.where("a.html", now=1.0) == "/m1"
    memory.remember("a.html", "/m2", now=2.0)
    assert memory.where("a.html", now=3.0) == "/m2"
    memory.forget("a.html")
    assert memory.where("a.html", now=4.0) is None
    assert memory.where("never.html", now=4.0) is None


def test_names_are_kept_for_max_names_others_or_ttl() -> None:
    """A name survives max_names later names and ttl_s seconds; older ones go after two
    generations, and at most 2 x max_names are held."""
    memory = NameMemory(max_names=100, ttl_s=3600)
    memory.remember("old.html", "/m1", now=0.0)
    for i in range(100):
        memory.remember(f"n{i}", "/m1", now=1.0)
    assert memory.where("old.html", now=2.0) == "/m1"  # moved back to the current generation
    for i in range(250):
        memory.remember(f"later{i}", "/m1", now=3.0)
    assert memory.where("n5", now=4.0) is None
    assert len(memory) <= 200


def test_a_generation_is_retired_after_ttl() -> None:
    """After two ttl_s periods without use, a name is forgotten."""
    memory = NameMemory(max_names=1000, ttl_s=10)
    start = memory._started
    memory.remember("a", "/m1", now=start + 1)
    memory.remember("b", "/m1", now=start + 11)  # rotates: "a" is now in the previous one
    assert memory.where("a", now=start + 12) == "/m1"
    memory.remember("c", "/m1", now=start + 25)
    memory.remember("d", "/m1", now=start + 40)
    assert memory.where("b", now=start + 41) is None


def test_reload_drops_entries_of_removed_mounts_only() -> None:
    """configure() with a new mount table forgets removed mounts' names, keeps the others',
    whatever the new order."""
    memory = NameMemory(max_names=10, ttl_s=3600)
    memory.remember("on-1", "/m1")
    memory.remember("on-2", "/m2")
    memory.configure((10, 3600.0), ["/m2", "/m3"])
    assert memory.where("on-1") is None
    assert memory.where("on-2") == "/m2"
    memory.configure((10, 3600.0), ["/m1", "/m2"])  # /m1 back: a new mount, nothing known
    assert memory.where("on-1") is None
    memory.remember("x", "/m1")
    assert memory.where("x") == "/m1"


def test_half_a_million_names_fit_the_stated_bound() -> None:
    """The default bound, two full generations of 500,000 names, takes under 100 MiB
    (measured with tracemalloc; about 80 bytes a name)."""
    memory = NameMemory(max_names=500_000, ttl_s=3600)
    gc.collect()
    tracemalloc.start()
    try:
        for i in range(1_000_000):
            memory.remember(f"some/old/link/number-{i}.html", "/server1/content", now=1.0)
        size, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(memory) >= 999_999
    assert memory.where("some/old/link/number-999999.html") == "/server1/content"
    assert memory.where("some/old/link/number-1.html") == "/server1/content"
    assert size < 100 * 1024 * 1024, size / 1024 / 1024

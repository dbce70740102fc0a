"""The name cache: bounded staleness after a file changes on a mount (app.federation.cache)."""

from __future__ import annotations

import os
import re
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from app.federation.cache import NameCache
from app.http.responses import make_representation

pytestmark = pytest.mark.live

TTL_S = 2.0  # the documented default of cache.ttl_s


def _poll_until(client: Any, path: str, wanted: bytes, bound_s: float) -> float:
    """Seconds until ``path`` serves ``wanted``; fails past ``bound_s``."""
    started = time.monotonic()
    while time.monotonic() - started < bound_s:
        if client.get(path).content == wanted:
            return time.monotonic() - started
        time.sleep(0.05)
    pytest.fail(f"{path} still stale after {bound_s} s")


def test_replaced_file_is_served_new_within_the_ttl(tmp_path: Path, start_vend: Any) -> None:
    """A small file replaced on its mount is served in its new version within ttl_s."""
    m1, m2 = tmp_path / "m1", tmp_path / "m2"
    m1.mkdir()
    m2.mkdir()
    (m2 / "page.html").write_bytes(b"version 1")
    proc = start_vend([str(m1), str(m2)])
    with proc.client() as client:
        assert client.get("/page.html").content == b"version 1"
        assert client.get("/page.html").content == b"version 1"  # now from the cache
        (m2 / "page.html.tmp").write_bytes(b"version 2, longer")
        os.replace(m2 / "page.html.tmp", m2 / "page.html")
        waited = _poll_until(client, "/page.html", b"version 2, longer", TTL_S + 1.0)
        # A copy appearing on an earlier mount takes over within the same bound.
        (m1 / "page.html").write_bytes(b"from m1")
        waited = max(waited, _poll_until(client, "/page.html", b"from m1", TTL_S + 1.0))
        # A deleted file stops being served within the bound too.
        (m1 / "page.html").unlink()
        (m2 / "page.html").unlink()
        started = time.monotonic()
        while client.get("/page.html").status_code != 404:
            assert time.monotonic() - started < TTL_S + 1.0
            time.sleep(0.05)
    assert waited <= TTL_S + 1.0


def test_a_new_file_is_found_after_a_cached_miss(tmp_path: Path, start_vend: Any) -> None:
    """A 404 is remembered only briefly: a file created afterwards is served within miss_ttl_s."""
    m1 = tmp_path / "m1"
    m1.mkdir()
    proc = start_vend([str(m1)])
    with proc.client() as client:
        assert client.get("/late.txt").status_code == 404
        (m1 / "late.txt").write_bytes(b"here now")
        _poll_until(client, "/late.txt", b"here now", 1.0 + 1.0)


def test_cache_bounds_entries_and_bytes() -> None:
    """Least recently used entries leave first; bodies over max_file_bytes are not kept."""
    cache = NameCache(ttl_s=2, miss_ttl_s=1, max_entries=3, max_bytes=10, max_file_bytes=4)
    rep = make_representation(4, 0, "text/plain", "no-cache")
    mount: Any = object()
    for name in ("a", "b", "c"):
        cache.put_file(name, mount, rep, b"1234", now=0.0)
    assert len(cache) == 2 and cache.body_bytes == 8  # 12 bytes > 10: "a" left
    assert cache.get("a", 0.0) is None and cache.get("b", 0.0) is not None
    big = cache.put_file("d", mount, rep, b"12345", now=0.0)
    assert big.body is None
    cache.put_miss("e", now=0.0)
    assert len(cache) == 3
    assert cache.get("b", 1.99) is not None and cache.get("b", 2.0) is None
    assert cache.get("e", 0.99) is not None and cache.get("e", 1.0) is None


def _reloads(client: Any) -> int:
    return int(client.get("/.well-known/vend/health").json()["process"]["reloads"])


def _reload(proc: Any, client: Any, bound_s: float = 20.0) -> None:
    """SIGHUP, then wait until the process has taken it."""
    before = _reloads(client)
    os.kill(proc.pid, signal.SIGHUP)
    deadline = time.monotonic() + bound_s
    while _reloads(client) == before:
        assert time.monotonic() < deadline, proc.output()[-2000:]
        time.sleep(0.05)


def _counter(client: Any, line_start: str) -> float:
    text = client.get("/.well-known/vend/metrics").text
    found = re.search(rf"^{re.escape(line_start)} (\S+)$", text, re.M)
    return float(found.group(1)) if found else 0.0


def test_a_reload_with_unchanged_settings_keeps_the_cache(tmp_path: Path, start_vend: Any) -> None:
    """After SIGHUP with unchanged settings, a name cached before it is still a cache hit
    within cache.ttl_s: no lookup on the mount, the hit counter moves."""
    m1 = tmp_path / "m1"
    m1.mkdir()
    attempts = 5  # a busy machine may take longer than ttl_s to reload: another name
    for attempt in range(attempts):
        (m1 / f"page-{attempt}.html").write_bytes(b"cached page")
    config = tmp_path / "vend.toml"
    ttl_s = 3.0  # the longest cache.ttl_s allowed
    config.write_text(f'mounts = ["{m1}"]\n[cache]\nttl_s = {ttl_s}\n')
    proc = start_vend(None, args=["--config", str(config)])
    hit = 'vend_cache_lookups_total{outcome="hit"}'
    lookups = 'vend_mount_lookups_total{mount="m1",outcome="hit"}'
    with proc.client() as client:
        for attempt in range(attempts):
            name = f"/page-{attempt}.html"  # never asked before: looked up, then cached
            assert client.get(name).content == b"cached page"
            cached_at = time.monotonic()
            _reload(proc, client)
            hits, looked_up = _counter(client, hit), _counter(client, lookups)
            response = client.get(name)
            # Before the TTL's last quarter, where a hit also hands the name to the
            # refresher (app.federation.refresh), which looks it up again.
            fresh = time.monotonic() - cached_at < ttl_s * 0.75
            assert response.content == b"cached page"
            if fresh:
                assert _counter(client, hit) == hits + 1
                assert _counter(client, lookups) == looked_up
                return
    pytest.fail(f"no reload finished within cache.ttl_s in {attempts} attempts")


def test_a_reload_changing_cache_control_changes_the_next_answer(
    tmp_path: Path, start_vend: Any
) -> None:
    """A name answered from the cache (and the hot path's prebuilt bytes) carries the new
    Cache-Control in its very next 200 and 304 after a reload that changes cache_control."""
    m1 = tmp_path / "m1"
    m1.mkdir()
    (m1 / "page.html").write_bytes(b"cached page")
    config = tmp_path / "vend.toml"
    config.write_text(f'mounts = ["{m1}"]\ncache_control = "public, max-age=300"\n')
    proc = start_vend(None, args=["--config", str(config)])
    with proc.client() as client:
        for _ in range(3):  # cached, then answered from the prebuilt bytes
            response = client.get("/page.html")
            assert response.headers["cache-control"] == "public, max-age=300"
        etag = response.headers["etag"]
        config.write_text(f'mounts = ["{m1}"]\ncache_control = "no-cache"\n')
        _reload(proc, client)
        response = client.get("/page.html")
        assert response.content == b"cached page"
        assert response.headers["cache-control"] == "no-cache"
        not_modified = client.get("/page.html", headers={"if-none-match": etag})
        assert not_modified.status_code == 304
        assert not_modified.headers["cache-control"] == "no-cache"

"""The ASGI application in process (httpx's ASGI transport): routing decisions and errors.

The ASGI transport offers no zero-copy extension, so bodies here take the thread
fallback; streaming itself is tested live in tests/live.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from app.asgi import create_app
from app.settings import Settings

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    """Run these tests on asyncio, as uvicorn does."""
    return "asyncio"


def _tree(base: Path) -> list[Path]:
    m1, m2 = base / "m1", base / "m2"
    (m1 / "docs").mkdir(parents=True)
    (m2 / "docs").mkdir(parents=True)
    (m2 / "guide").mkdir(parents=True)
    (m1 / "index.html").write_text("root index m1")
    (m2 / "docs" / "index.html").write_text("docs index m2")
    (m2 / "guide" / "default.htm").write_text("guide default m2")
    (m1 / "a.txt").write_text("a on m1")
    return [m1, m2]


async def _client(settings: Settings) -> httpx.AsyncClient:
    app = create_app(settings)
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://legacy.example.org"
    )


@pytest.fixture
async def plain(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    """An app over two mounts with default settings."""
    async with await _client(Settings(mounts=[str(p) for p in _tree(tmp_path)])) as client:
        yield client


@pytest.fixture
async def indexed(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    """An app with index_names set."""
    settings = Settings(
        mounts=[str(p) for p in _tree(tmp_path)], index_names=["index.html", "default.htm"]
    )
    async with await _client(settings) as client:
        yield client


async def test_directories_are_404_without_index_names(plain: httpx.AsyncClient) -> None:
    """With no index_names, '/', '/dir' and '/dir/' are 404: nothing is ever listed."""
    for path in ("/", "/docs", "/docs/"):
        response = await plain.get(path)
        assert response.status_code == 404, path
        assert response.text == "Not Found\n"


async def test_index_names_serve_and_redirect_like_apache(indexed: httpx.AsyncClient) -> None:
    """'/dir/' serves the first index found across mounts; '/dir' redirects with the query kept."""
    assert (await indexed.get("/")).text == "root index m1"
    assert (await indexed.get("/docs/")).text == "docs index m2"
    assert (await indexed.get("/guide/")).text == "guide default m2"
    redirect = await indexed.get("/docs?x=1")
    assert redirect.status_code == 301
    assert redirect.headers["location"] == "/docs/?x=1"
    assert (await indexed.get("/nothing/")).status_code == 404
    assert (await indexed.get("/a.txt")).text == "a on m1"


async def test_refused_names_get_a_short_400(plain: httpx.AsyncClient) -> None:
    """A name the whitelist refuses is a short 400 that echoes nothing."""
    response = await plain.get("/.env")
    assert response.status_code == 400
    assert response.text == "Bad Request\n"
    assert response.headers["content-type"] == "text/plain; charset=utf-8"


async def test_missing_mount_gives_503_not_404(tmp_path: Path) -> None:
    """When a mount is unusable and no other mount has the name, the answer is 503 + Retry-After."""
    m1, _m2 = _tree(tmp_path)
    settings = Settings(mounts=[str(tmp_path / "absent"), str(m1)])
    async with await _client(settings) as client:
        served = await client.get("/a.txt")
        unknown = await client.get("/b.txt")
    assert served.status_code == 200 and served.text == "a on m1"
    assert unknown.status_code == 503 and unknown.headers["retry-after"] == "30"


async def test_health_and_metrics(tmp_path: Path) -> None:
    """Health lists mounts by name (never paths) with their state; metrics count requests."""
    m1, _m2 = _tree(tmp_path)
    settings = Settings(mounts=[str(m1), {"path": str(tmp_path / "gone"), "name": "gone"}])
    app = create_app(settings)
    await app.prepare_mounts()
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        await client.get("/a.txt")
        await client.get("/zzz.txt")
        health = await client.get("/.well-known/vend/health")
        metrics = await client.get("/.well-known/vend/metrics")
        post = await client.post("/.well-known/vend/health")
    body: dict[str, Any] = json.loads(health.text)
    assert health.status_code == 200 and body["status"] == "ok"
    assert [(m["name"], m["state"]) for m in body["mounts"]] == [("m1", "up"), ("gone", "down")]
    assert body["mounts"][1]["last_error"] == "ENOENT"
    assert str(tmp_path) not in health.text
    assert 'vend_requests_total{status="200"} 1.0' in metrics.text
    assert 'vend_mount_up{mount="gone"} 0.0' in metrics.text
    assert 'vend_mount_lookups_total{mount="m1",outcome="hit"} 1.0' in metrics.text
    assert 'vend_mount_lookups_total{mount="m1",outcome="miss"} 1.0' in metrics.text
    assert 'vend_mount_lookups_total{mount="gone",outcome="skipped"}' in metrics.text
    assert 'vend_mount_lookup_seconds_count{mount="m1"} 2.0' in metrics.text
    assert 'vend_cache_lookups_total{outcome="miss"} 2.0' in metrics.text
    assert post.status_code == 405
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        for odd in (
            "/.well-known/vend/health/",
            "/.well-known/vend/%68ealth",
            "/.well-known/vend/x",
        ):
            response = await client.get(odd)
            assert (response.status_code, response.text) == (404, "Not Found\n"), odd


async def test_health_is_503_when_no_mount_is_usable(tmp_path: Path) -> None:
    """With every mount unusable, health answers 503 and status 'unavailable'."""
    app = create_app(Settings(mounts=[str(tmp_path / "nope")]))
    await app.prepare_mounts()
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://t"
    ) as client:
        health = await client.get("/.well-known/vend/health")
    assert health.status_code == 503 and health.json()["status"] == "unavailable"


async def test_strict_pattern_and_custom_mime_types(tmp_path: Path) -> None:
    """name_pattern='strict' refuses two-dot names; mime_types adds extensions."""
    m1, _ = _tree(tmp_path)
    (m1 / "lib.min.js").write_text("x")
    (m1 / "data.vend").write_text("y")
    settings = Settings(
        mounts=[str(m1)], name_pattern="strict", mime_types={".vend": "text/x-vend"}
    )
    async with await _client(settings) as client:
        assert (await client.get("/lib.min.js")).status_code == 400
        typed = await client.get("/data.vend")
    assert typed.status_code == 200 and typed.headers["content-type"] == "text/x-vend"


async def test_shadowed_copies_opened_in_parallel_are_closed(tmp_path: Path) -> None:
    """Every mount is asked at once: the copies that lose to mount 1 are closed, so serving
    a large file held by three mounts 40 times leaves no descriptor open."""
    mounts = [tmp_path / f"m{i}" for i in (1, 2, 3)]
    for i, mount in enumerate(mounts, 1):
        mount.mkdir()
        (mount / "big.bin").write_bytes(bytes([i]) * 300_000)  # over cache.max_file_bytes
    settings = Settings(mounts=[str(m) for m in mounts], cache={"ttl_s": 0})
    async with await _client(settings) as client:
        assert (await client.get("/big.bin")).content == b"\x01" * 300_000
        before = len(list(Path("/proc/self/fd").iterdir()))
        for _ in range(40):
            response = await client.get("/big.bin")
            assert response.content == b"\x01" * 300_000
        for _ in range(50):  # lookups that finished after the answer close on their own
            if len(list(Path("/proc/self/fd").iterdir())) <= before:
                break
            await anyio.sleep(0.05)
        assert len(list(Path("/proc/self/fd").iterdir())) <= before

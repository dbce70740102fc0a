"""A reload that removes a mount removes its metric series (one process)."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from app.asgi import create_app
from app.settings import Settings

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    """Run these tests on asyncio, as uvicorn does."""
    return "asyncio"


async def test_removed_mount_leaves_the_metrics_and_reloads_are_counted(tmp_path: Path) -> None:
    """After a reload without mount m1, no series names m1; m2's stay; health counts the reload."""
    m1, m2 = tmp_path / "m1", tmp_path / "m2"
    for m in (m1, m2):
        m.mkdir()
    (m1 / "a.txt").write_text("a")
    (m2 / "b.txt").write_text("b")
    both = Settings(mounts=[str(m1), str(m2)])
    only_m2 = Settings(mounts=[str(m2)])
    app = create_app(both, lambda: only_m2)
    await app.prepare_mounts()
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        await client.get("/a.txt")
        await client.get("/b.txt")
        before = (await client.get("/.well-known/vend/metrics")).text
        assert await app.reload()
        after = (await client.get("/.well-known/vend/metrics")).text
        health = (await client.get("/.well-known/vend/health")).json()
    assert 'vend_mount_up{mount="m1"} 1.0' in before
    assert 'vend_mount_lookups_total{mount="m1",outcome="hit"} 1.0' in before
    assert 'mount="m1"' not in after
    assert 'vend_mount_lookups_total{mount="m2",outcome="hit"} 1.0' in after
    assert 'vend_mount_lookup_seconds_count{mount="m2"}' in after
    assert 'vend_requests_total{status="200"} 2.0' in after
    assert health["process"]["reloads"] == 1
    assert [m["name"] for m in health["mounts"]] == ["m2"]

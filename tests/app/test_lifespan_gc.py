"""Start-up objects are frozen out of the collector's sight, and given back on reload."""

from __future__ import annotations

import asyncio
import gc
from pathlib import Path

import pytest

from app.asgi import create_app
from app.settings import Settings
from app.types import Message

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    """Run these tests on asyncio, as uvicorn does."""
    return "asyncio"


async def test_startup_freezes_what_it_made_and_a_reload_unfreezes_it(tmp_path: Path) -> None:
    """After lifespan startup the process's objects are frozen; a reload gives them back."""
    settings = Settings(mounts=[str(tmp_path)])
    app = create_app(settings, lambda: settings)
    inbox: asyncio.Queue[Message] = asyncio.Queue()
    outbox: asyncio.Queue[Message] = asyncio.Queue()
    gc.unfreeze()
    lifespan = asyncio.create_task(app({"type": "lifespan"}, inbox.get, outbox.put))
    try:
        await inbox.put({"type": "lifespan.startup"})
        assert (await asyncio.wait_for(outbox.get(), 30))["type"] == "lifespan.startup.complete"
        assert gc.get_freeze_count() > 1000  # the modules, settings and mounts at least
        assert await app.reload()
        assert gc.get_freeze_count() == 0
        await inbox.put({"type": "lifespan.shutdown"})
        assert (await asyncio.wait_for(outbox.get(), 30))["type"] == "lifespan.shutdown.complete"
        await asyncio.wait_for(lifespan, 30)
    finally:
        gc.unfreeze()
        if not lifespan.done():
            lifespan.cancel()

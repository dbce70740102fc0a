"""Fixtures shared by every test directory."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import VendProcess


@pytest.fixture
def start_vend(tmp_path: Path) -> Iterator[Any]:
    """Start ``vend serve`` processes; every one is stopped at teardown, pass or fail."""
    started: list[VendProcess] = []

    def start(*args: Any, **kwargs: Any) -> VendProcess:
        proc = VendProcess(*args, **kwargs)
        started.append(proc)
        return proc.start(tmp_path / f"vend-{len(started)}.log")

    yield start
    for proc in started:
        proc.stop()

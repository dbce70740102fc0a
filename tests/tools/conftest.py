"""Fixtures for the faultfs tool's own tests, and a check that no mount outlives them."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.tools.fuse_fixtures import faultfs, leftover_mounts

__all__ = ["faultfs", "no_faultfs_left_mounted"]


@pytest.fixture(scope="session", autouse=True)
def no_faultfs_left_mounted() -> Iterator[None]:
    """Fail the session if a faultfs mount it started is still in /proc/self/mountinfo."""
    yield
    left = leftover_mounts()
    assert left == [], f"faultfs mounts left behind: {left}"

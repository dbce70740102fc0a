"""Fault tests: vend over a fault-injecting FUSE mount (tests/tools/faultfs.py)."""

from __future__ import annotations

from tests.tools.fuse_fixtures import faultfs

__all__ = ["faultfs"]

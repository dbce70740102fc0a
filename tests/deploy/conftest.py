"""Fixtures for the deploy/ tests (helpers live in netlab.py)."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.deploy.netlab import Lab


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    """Yield a Lab; afterwards remove all it made and fail if that did not work."""
    made = Lab(tmp_path)
    try:
        yield made
    finally:
        errors = made.close()
        leftover = [
            line
            for line in subprocess.run(
                ["ip", "netns", "list"], capture_output=True, text=True, check=False
            ).stdout.splitlines()
            if line.startswith(f"vdt{made.tag}-")
        ]
        if errors or leftover:
            pytest.fail(f"teardown incomplete: {errors} {leftover}")

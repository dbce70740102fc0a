"""The house style holds: ruff lint and format, and mypy strict on app/."""

from __future__ import annotations

import subprocess
import sys

from tests.support import REPO


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=REPO, capture_output=True, text=True, timeout=240
    )


def test_ruff_lint_and_format() -> None:
    """ruff finds nothing to lint or reformat in app/ and tests/."""
    lint = _run("ruff", "check", "app", "tests")
    assert lint.returncode == 0, lint.stdout
    fmt = _run("ruff", "format", "--check", "app", "tests")
    assert fmt.returncode == 0, fmt.stdout


def test_mypy_strict_on_app() -> None:
    """mypy --strict reports no error in app/."""
    result = _run("mypy", "app")
    assert result.returncode == 0, result.stdout

"""Versions of everything a results table depends on, read from the tools themselves."""

from __future__ import annotations

import importlib.metadata
import platform
import re
import subprocess
from pathlib import Path
from typing import Final

BENCH_PACKAGES: Final = ("granian", "aiohttp", "starlette", "uvicorn", "uvloop", "httptools")


def _run(argv: list[str], *, any_status: bool = False) -> str:
    """Returns a command's combined output (nginx -v writes to stderr), or "" on failure.

    ``any_status`` keeps the output of a command that exits non-zero (``wrk -v``).
    """
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return (done.stdout + done.stderr).strip() if done.returncode == 0 or any_status else ""


def _first_match(pattern: str, text: str) -> str:
    found = re.search(pattern, text)
    if found:
        return found.group(1)
    return text.splitlines()[0] if text else "unknown"


def collect_versions(*, repo: Path, vend_python: Path) -> dict[str, str]:
    """Collects versions of the servers, tools, Python packages, vend and the machine.

    Args:
        repo: the vend checkout (for its git commit).
        vend_python: the Python of the checkout's .venv (to read vend's package version).

    Returns:
        Component name -> version string, in display order; "unknown" or "unavailable"
        where a tool could not say.
    """
    versions = {
        "nginx": _first_match(r"nginx/(\S+)", _run(["nginx", "-v"])),
        "Apache": _first_match(r"Apache/(\S+)", _run(["apache2", "-v"])),
        "PHP (mod_php)": _first_match(r"PHP (\S+)", _run(["php", "-v"])),
        "wrk": _first_match(r"wrk (\S+)", _run(["wrk", "-v"], any_status=True)),
        "OpenSSL": _first_match(r"OpenSSL (\S+)", _run(["openssl", "version"])),
        "Python (peers)": platform.python_version(),
    }
    for package in BENCH_PACKAGES:
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = "not installed"
    vend = _run(
        [
            str(vend_python),
            "-c",
            "import importlib.metadata as m, platform; "
            "print(m.version('vend'), 'on Python', platform.python_version())",
        ]
    )
    versions["vend"] = vend or "not installed"
    commit = _run(["git", "-C", str(repo), "rev-parse", "--short", "HEAD"]) or "no commit"
    dirty = _run(["git", "-C", str(repo), "status", "--porcelain", "--", "app", "pyproject.toml"])
    versions["vend commit"] = commit + (" (app/ or pyproject.toml modified)" if dirty else "")
    versions["kernel"] = platform.release()
    versions["CPU"] = _cpu_model()
    return versions


def _cpu_model() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "unknown"
    return _first_match(r"model name\s*:\s*(.+)", text)

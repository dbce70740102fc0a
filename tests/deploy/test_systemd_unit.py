"""deploy/systemd/vend.service: systemd accepts it, and its hardening scores well.

The threshold below is the one deploy/README.md documents; raise both together,
and only with a reason.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.deploy.netlab import DEPLOY, SAMPLE_MOUNT, vend_command

UNIT = DEPLOY / "systemd" / "vend.service"
INSTALLED_VEND = "/opt/vend/bin/vend"
#: Highest acceptable `systemd-analyze security` exposure (0.0 best, 10.0 worst).
EXPOSURE_THRESHOLD = 1.5

needs_systemd_analyze = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed"
)
#: Runs a command with the kernel's MDWE flag set (PR_SET_MDWE, Linux 6.3+): what
#: the unit's MemoryDenyWriteExecute=yes forbids, the kernel refuses here too.
MDWE_WRAPPER = """
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
PR_SET_MDWE, PR_GET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN = 65, 66, 1
if libc.prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0) != 0:
    sys.exit(f"PR_SET_MDWE: errno {ctypes.get_errno()}")
assert libc.prctl(PR_GET_MDWE, 0, 0, 0, 0) == PR_MDWE_REFUSE_EXEC_GAIN
os.execv(sys.argv[1], sys.argv[1:])
"""


def unit_for_test(tmp_path: Path, text: str | None = None) -> Path:
    """Copy the unit to ``tmp_path`` with ExecStart pointing at a stub that exists.

    ``systemd-analyze verify`` checks that the ExecStart binary exists; the
    unit names the install path /opt/vend/bin/vend, which this machine lacks.
    """
    text = UNIT.read_text() if text is None else text
    assert text.count(INSTALLED_VEND) == 1, "ExecStart should name /opt/vend/bin/vend once"
    stub = tmp_path / "vend"
    stub.write_text("#!/bin/sh\nexit 0\n")
    stub.chmod(0o755)
    unit = tmp_path / "vend.service"
    unit.write_text(text.replace(INSTALLED_VEND, str(stub)))
    return unit


def verify(unit: Path) -> subprocess.CompletedProcess[str]:
    """Run ``systemd-analyze verify`` on one unit file."""
    return subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def service_settings(text: str) -> dict[str, list[str]]:
    """Return the [Service] section's settings: key to every value assigned, in order."""
    settings: dict[str, list[str]] = {}
    section = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line
        elif section == "[Service]":
            key, _, value = line.partition("=")
            settings.setdefault(key, []).append(value)
    return settings


@needs_systemd_analyze
def test_verify_is_silent(tmp_path: Path) -> None:
    """systemd-analyze verify accepts the unit and prints nothing."""
    proc = verify(unit_for_test(tmp_path))
    assert (proc.returncode, proc.stderr, proc.stdout) == (0, "", "")


@needs_systemd_analyze
def test_verify_reports_a_misspelled_directive(tmp_path: Path) -> None:
    """A misspelled directive makes verify print a warning, so the silent check means something."""
    broken = UNIT.read_text().replace("ProtectSystem=strict", "ProtectSistem=strict")
    proc = verify(unit_for_test(tmp_path, broken))
    assert "ProtectSistem" in proc.stderr


@needs_systemd_analyze
def test_security_exposure_is_under_threshold(tmp_path: Path) -> None:
    """systemd-analyze security --offline=yes rates the unit's exposure at most 1.5."""
    proc = subprocess.run(
        [
            "systemd-analyze",
            "security",
            "--offline=yes",
            "--no-pager",
            str(unit_for_test(tmp_path)),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    match = re.search(r"Overall exposure level for vend\.service: (\d+\.\d+)", proc.stdout)
    assert match, proc.stdout + proc.stderr
    assert float(match.group(1)) <= EXPOSURE_THRESHOLD, proc.stdout


def test_unit_runs_vend_unprivileged_with_read_only_mounts() -> None:
    """The unit runs `vend serve` as user vend, restarts on failure, mounts content read-only."""
    settings = service_settings(UNIT.read_text())
    assert settings["ExecStart"] == [f"{INSTALLED_VEND} serve --config /etc/vend/vend.toml"]
    assert settings["User"] == ["vend"]
    assert settings["NoNewPrivileges"] == ["yes"]
    assert settings["ProtectSystem"] == ["strict"]
    assert settings["PrivateTmp"] == ["yes"]
    assert settings["ReadOnlyPaths"] == ["-/srv/vend"]
    assert settings["Restart"] == ["on-failure"]
    assert settings["CapabilityBoundingSet"] == [""]


def test_readme_documents_the_threshold() -> None:
    """deploy/README.md states the same exposure threshold that this test enforces."""
    readme = (DEPLOY / "README.md").read_text()
    assert f"exposure of at most {EXPOSURE_THRESHOLD}" in readme


def test_vend_serves_under_memory_deny_write_execute(tmp_path: Path, start_vend: Any) -> None:
    """vend started as ExecStart starts it, with writable-executable memory refused, serves a file."""
    wrapper = tmp_path / "mdwe.py"
    wrapper.write_text(MDWE_WRAPPER)
    config = tmp_path / "vend.toml"
    config.write_text(f'mounts = ["{SAMPLE_MOUNT}"]\n')
    server = start_vend(
        command=[sys.executable, str(wrapper), *vend_command(), "serve", "--config",
                 str(config), "--port", "{port}"],
    )  # fmt: skip
    with httpx.Client(base_url=server.url, trust_env=False, timeout=30) as client:
        response = client.get("/about.html")
    assert (response.status_code, response.content) == (
        200,
        (SAMPLE_MOUNT / "about.html").read_bytes(),
    )

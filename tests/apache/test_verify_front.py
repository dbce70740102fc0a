"""``vend verify --url`` through the real Apache vhost: TLS checked against the test CA
under the legacy name, reached with ``--connect-to`` before any DNS points at it."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.support import VEND

from .client import LEGACY_NAME
from .conftest import Content, Front

pytestmark = pytest.mark.apache


def _verify(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VEND_")}
    return subprocess.run(
        [str(VEND), "verify", "--no-progress", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_verify_through_apache_with_connect_to(
    front: Front, content: Content, tmp_path: Path
) -> None:
    """Links requested from the Apache front under the legacy name get their outcomes:
    served, differs, refused, not found, and forbidden for vend's private endpoints."""
    links = tmp_path / "links.txt"
    links.write_text(
        "/index.html\n/css/site.css?v=3\n/docs/manual.pdf\n/gone.html\n"
        "/docs/space%20name.html\n/.well-known/vend/misses\n"
    )
    listing = tmp_path / "listing.tsv"
    listing.write_text("shared.txt\t1\t0\n")
    report = tmp_path / "report.jsonl"
    result = _verify(
        str(links),
        str(listing),
        "--all",
        "--report",
        str(report),
        "--url",
        f"https://{LEGACY_NAME}",
        "--ca-file",
        str(front.pki.ca_pem),
        "--connect-to",
        f"127.0.0.1:{front.apache.https_port}",
    )
    assert result.returncode == 1, result.stdout + result.stderr
    rows = {
        r["path"]: (r["outcome"], r["detail"])
        for r in map(json.loads, report.read_text().splitlines())
    }
    size = len(content.file("shared.txt"))
    assert rows.pop("/shared.txt")[0] == "differs"
    assert rows == {
        "/index.html": ("served", None),
        "/css/site.css": ("served", None),
        "/docs/manual.pdf": ("served", None),
        "/gone.html": ("not found", "HTTP 404"),
        "/docs/space%20name.html": ("refused", "HTTP 400"),
        "/.well-known/vend/misses": ("forbidden", "HTTP 403"),
    }
    assert size > 1


def test_verify_refuses_an_untrusted_certificate(front: Front, tmp_path: Path) -> None:
    """Without the test CA the front's certificate is not trusted: every link is
    unavailable, none is reported served."""
    links = tmp_path / "links.txt"
    links.write_text("/index.html\n")
    report = tmp_path / "report.jsonl"
    result = _verify(
        str(links),
        "--report",
        str(report),
        "--url",
        f"https://{LEGACY_NAME}",
        "--connect-to",
        f"127.0.0.1:{front.apache.https_port}",
    )
    assert result.returncode == 1
    (row,) = map(json.loads, report.read_text().splitlines())
    assert (row["outcome"], row["detail"]) == ("unavailable", "ConnectError")

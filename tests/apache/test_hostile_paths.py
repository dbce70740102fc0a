"""Every attack path of tests/hostile-paths.tsv, sent raw through Apache over TLS,
gets an error status from Apache or vend (or the legitimate file where the row allows it),
never a 5xx and never content from outside the mounts."""

from __future__ import annotations

from pathlib import Path
from typing import Final

import pytest

from tests.support import HOSTILE_PATHS, read_hostile_paths

from .client import get_request, raw_request
from .conftest import CANARY, Content, Front

pytestmark = pytest.mark.apache

ROWS: Final = read_hostile_paths()


def test_corpus_is_present() -> None:
    """The corpus is found in the repository with its ~70 rows (a missing file must not pass)."""
    assert HOSTILE_PATHS.is_file(), HOSTILE_PATHS
    assert len(ROWS) >= 60


def _may_serve_index(expected: str) -> bool:
    """Whether the row's expected column allows the legitimate /index.html."""
    return "index.html" in expected and ("200" in expected or "strips the fragment" in expected)


@pytest.mark.parametrize("row", ROWS, ids=[f"{i}-{r['class'][:40]}" for i, r in enumerate(ROWS)])
def test_hostile_path_through_apache(row: dict[str, str], front: Front, content: Content) -> None:
    """The row's raw request-target gets a 4xx (or its allowed legitimate file), never a
    5xx, a canary from beside the mounts, or /etc/passwd."""
    response = raw_request(
        front.apache.https_port,
        get_request(row["raw_path"].encode("utf-8")),
        ca_pem=front.pki.ca_pem,
    )
    assert CANARY not in response.body
    assert b"root:x:0:0" not in response.body
    assert Path("/etc/passwd").read_bytes()[:64] not in response.body
    if response.status == 200:
        assert _may_serve_index(row["expected"]), row["raw_path"][:120]
        assert response.body == content.file("index.html")
    else:
        assert 400 <= response.status < 500, (row["raw_path"][:120], response.status)

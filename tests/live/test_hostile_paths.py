"""Every attack path of tests/hostile-paths.tsv, as raw bytes on a socket, is refused.

The corpus is the project's own file (a row is added with every path bug fixed). Each row
must get 400 or 404 (an HTTP-layer 400 for malformed request lines, 414/431 for the
oversized one), or, where its ``expected`` column allows, the legitimate file that the
part before ``?`` or ``#`` names; never a 5xx; and no response may contain a canary placed
above or beside a mount, or the contents of /etc/passwd.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.live.conftest import Tree
from tests.support import HOSTILE_PATHS, VendProcess, get_raw, read_hostile_paths

pytestmark = pytest.mark.live

ROWS = read_hostile_paths()


def test_corpus_is_present_and_large() -> None:
    """The corpus is found in the repository with its ~70 rows (a missing file must not pass)."""
    assert HOSTILE_PATHS.is_file()
    assert len(ROWS) >= 60


@pytest.mark.parametrize("row", ROWS, ids=[f"{i}-{r['class'][:40]}" for i, r in enumerate(ROWS)])
def test_hostile_path_is_refused(row: dict[str, str], server: VendProcess, tree: Tree) -> None:
    """The row's raw path gets 400/404 (or its allowed legitimate file), never 5xx or a leak."""
    target = row["raw_path"].encode("utf-8")
    response = get_raw(server.port, target)
    passwd = Path("/etc/passwd").read_bytes()
    assert response.status < 500, response
    for canary in tree.canaries:
        assert canary not in response.body
    assert passwd[:64] not in response.body
    assert b"root:x:0:0" not in response.body
    allowed = {400, 404}
    if "414" in row["expected"]:
        allowed |= {414, 431}
    expected = row["expected"]
    if "index.html" in expected and ("200" in expected or "strips the fragment" in expected):
        allowed.add(200)
    assert response.status in allowed, (row["raw_path"][:120], response.status)
    if response.status == 200:
        assert response.body == (tree.mounts[0] / "index.html").read_bytes()


def test_legitimate_names_are_served_in_the_same_run(server: VendProcess, tree: Tree) -> None:
    """A plain file and an in-mount symlink are served byte-exact: refusing all would fail."""
    plain = get_raw(server.port, b"/index.html")
    link = get_raw(server.port, b"/inside-link.txt")
    nested = get_raw(server.port, b"/static/app.js")
    expected = (tree.mounts[0] / "index.html").read_bytes()
    assert (plain.status, plain.body) == (200, expected)
    assert (link.status, link.body) == (200, expected)
    assert (nested.status, nested.body) == (200, b"// app\n")

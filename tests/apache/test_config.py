"""The shipped vhost files themselves: they pass Apache's configuration test and keep the
shape the README promises."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from .conftest import Content, Pki, vhost_defines
from .httpd import (
    BALANCER_MODULES,
    BASE_MODULES,
    SHIPPED_BALANCER_VHOST,
    SHIPPED_VHOST,
    configtest,
    free_port,
    write_config,
)

pytestmark = pytest.mark.apache

BACKEND_START = "# ---- backend:"
BACKEND_END = "# ---- end of backend ----"


def _directives(path: Path) -> list[str]:
    """Return the file's lines without comments and blank lines, stripped."""
    lines = (line.split("#", 1)[0].strip() for line in path.read_text().splitlines())
    return [line for line in lines if line]


def _without_variant_parts(text: str) -> str:
    """Return a vhost's text without its Define block, header comment and backend section."""
    end_of_defines = re.search(r"^# -+$", text, re.MULTILINE)
    assert end_of_defines is not None
    body = text[end_of_defines.end() :]
    start, end = body.index(BACKEND_START), body.index(BACKEND_END)
    return body[:start] + body[end:]


@pytest.mark.parametrize(
    ("vhost", "modules", "backends"),
    [
        (SHIPPED_VHOST, BASE_MODULES, ()),
        (
            SHIPPED_BALANCER_VHOST,
            BASE_MODULES + BALANCER_MODULES,
            ("http://127.0.0.1:1", "unix:/run/vend/vend-2.sock|http://localhost"),
        ),
    ],
    ids=["vend.conf", "vend-balancer.conf"],
)
def test_configtest_passes(
    tmp_path: Path,
    pki: Pki,
    content: Content,
    vhost: Path,
    modules: tuple[str, ...],
    backends: tuple[str, ...],
) -> None:
    """`apache2ctl -t` accepts the shipped vhost with the test's defines, and every
    ${VARIABLE} it uses is defined (Apache only warns about undefined ones)."""
    write_config(
        tmp_path,
        vhost=vhost,
        # vend.conf's shipped backend: vend's Unix socket.
        defines=vhost_defines(
            pki, content, "unix:/run/vend/vend.sock|http://localhost", backends=backends
        ),
        http_port=free_port(),
        https_port=free_port(),
        modules=modules,
    )
    result = configtest(tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Syntax OK" in result.stderr
    assert "is not defined" not in result.stderr, result.stderr
    assert "AH" not in result.stderr, result.stderr  # no warning of any kind


@pytest.mark.parametrize("vhost", [SHIPPED_VHOST, SHIPPED_BALANCER_VHOST], ids=lambda p: p.name)
def test_proxy_rule_has_the_documented_shape(vhost: Path) -> None:
    """Every path is proxied by one RewriteRule of the form "^/?(.*)$" -> BACKEND/$1 [P],
    with none of the options that change what reaches vend."""
    directives = _directives(vhost)
    rules = [d for d in directives if d.startswith("RewriteRule") and d.endswith("[P]")]
    assert len(rules) == 1
    assert re.fullmatch(
        r'RewriteRule "\^/\?\(\.\*\)\$" "(\$\{VEND_BACKEND\}|balancer://vend)/\$1" \[P\]',
        rules[0],
    ), rules[0]
    text = "\n".join(directives)
    assert "AllowEncodedSlashes" not in text
    assert "nocanon" not in text
    assert "mapping=" not in text
    for flags in re.findall(r"^RewriteRule\s.*\[([^\]]*)\]$", text, re.MULTILINE):
        assert not {"NE", "B", "noescape"} & {f.strip() for f in flags.split(",")}, flags
    assert "DEFLATE" not in text and "mod_deflate" not in text


def test_balancer_variant_differs_only_in_its_backend() -> None:
    """vend-balancer.conf is vend.conf with another backend section, so fixes to one reach
    the other."""
    assert _without_variant_parts(SHIPPED_VHOST.read_text()) == _without_variant_parts(
        SHIPPED_BALANCER_VHOST.read_text()
    )


@pytest.mark.parametrize("vhost", [SHIPPED_VHOST, SHIPPED_BALANCER_VHOST], ids=lambda p: p.name)
def test_defines_are_at_the_top(vhost: Path) -> None:
    """All settings an operator edits are Define lines before the first section."""
    directives = _directives(vhost)
    first_section = next(i for i, d in enumerate(directives) if d.startswith("<"))
    defines = [i for i, d in enumerate(directives) if d.startswith("Define ")]
    assert defines and max(defines) < first_section
    used = set(re.findall(r"\$\{(\w+)\}", vhost.read_text()))
    defined = {directives[i].split()[1] for i in defines}
    assert used == defined

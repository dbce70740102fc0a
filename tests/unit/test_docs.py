"""The documentation holds together: links resolve, every setting is documented, the layout
and the tests' folder list match the tree, and the README stays short.

Headings are turned into anchors by GitHub's rules (lower case; every character that is
not a letter, digit, space, ``-`` or ``_`` dropped; spaces become ``-``; a repeated slug
gets ``-1``, ``-2``, ...), so a link that works here works on GitHub.
"""

from __future__ import annotations

import json
import re
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from app.settings import Settings
from tests.support import REPO

README_MAX_BYTES = 10_000
"""The README's budget (issue 20: at most 10 KB); the rest belongs in docs/."""

DOC_DIRS = ("docs", "deploy", "apache")
"""Folders whose Markdown files, at any depth, have their links checked."""

DOC_FILES = ("README.md", "tests/README.md", "benchmarks/README.md")
"""Single Markdown files checked too (benchmark results pages are generated: not these)."""

FENCE = re.compile(r"^\s*(```|~~~)")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
INLINE_CODE = re.compile(r"(`+)(.+?)\1")
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE = re.compile(r"^\s*\[[^\]]+\]:\s*(\S+)")
SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")


def markdown_files() -> list[Path]:
    """The Markdown files whose links are checked: DOC_FILES and those under DOC_DIRS."""
    files = [REPO / name for name in DOC_FILES]
    for folder in DOC_DIRS:
        files.extend(sorted((REPO / folder).rglob("*.md")))
    return files


def prose_lines(text: str) -> Iterator[tuple[int, str]]:
    """Yield (line number from 1, line) for the lines outside fenced code blocks."""
    fenced = False
    for number, line in enumerate(text.splitlines(), start=1):
        if FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            yield number, line


def slug(heading: str) -> str:
    """GitHub's anchor for a heading's text (without its duplicate suffix)."""
    text = INLINE_CODE.sub(lambda m: m.group(2), heading)
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", text)  # a link keeps its text
    text = re.sub(r"<[^>]+>", "", text)
    text = text.strip().lower()
    text = "".join(c for c in text if c.isalnum() or c in " -_")
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every anchor GitHub makes for the headings of the Markdown file at path."""
    seen: dict[str, int] = {}
    found: set[str] = set()
    for _, line in prose_lines(path.read_text(encoding="utf-8")):
        match = HEADING.match(line)
        if not match:
            continue
        base = slug(match.group(2))
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found


def links(path: Path) -> Iterator[tuple[int, str]]:
    """Yield (line number, target) for every link in the file's prose, code spans left out."""
    for number, line in prose_lines(path.read_text(encoding="utf-8")):
        reference = REFERENCE.match(line)
        if reference:
            yield number, reference.group(1)
            continue
        for match in LINK.finditer(INLINE_CODE.sub("", line)):
            yield number, match.group(1)


def broken_link(source: Path, target: str) -> str | None:
    """Why the relative link target in source does not resolve, or None when it does."""
    if SCHEME.match(target):
        return None  # an absolute URL (https:, mailto:): not ours to check offline
    file_part, _, anchor = target.partition("#")
    resolved = (source.parent / file_part).resolve() if file_part else source
    if not resolved.exists():
        return f"{file_part}: no such file"
    if not resolved.is_relative_to(REPO):
        return f"{file_part}: outside the repository"
    if not anchor:
        return None
    if resolved.suffix != ".md":
        return f"#{anchor}: {file_part} is not Markdown, it has no headings"
    if anchor not in anchors(resolved):
        return f"#{anchor}: no such heading in {resolved.relative_to(REPO)}"
    return None


def test_slugs_follow_githubs_rules() -> None:
    """Headings with code, punctuation and slashes give GitHub's anchors, duplicates numbered."""
    assert slug("HTTP/1.1 framing (RFC 9112)") == "http11-framing-rfc-9112"
    assert slug("How a request travels through `app/`") == "how-a-request-travels-through-app"
    assert slug("`benchmarks/compare --load long-tail`") == "benchmarkscompare---load-long-tail"
    assert slug("Health, metrics, misses and logs") == "health-metrics-misses-and-logs"
    assert slug("Names: the whitelist and the fixed rules") == (
        "names-the-whitelist-and-the-fixed-rules"
    )


def test_links_are_found_outside_code_only(tmp_path: Path) -> None:
    """Links in prose, tables and reference lines are found; those in code are not."""
    page = tmp_path / "page.md"
    page.write_text(
        '# Top\n\n## Top\n\nSee [a](a.md#x) and [b](#top-1 "title").\n'
        "| cell | [c](../c.md) |\n\n`[not](a link)`\n\n```sh\n[no](link)\n# not a heading\n```\n"
        "[ref]: d.md\n",
        encoding="utf-8",
    )
    assert [target for _, target in links(page)] == ["a.md#x", "#top-1", "../c.md", "d.md"]
    assert anchors(page) == {"top", "top-1"}


@pytest.mark.parametrize(
    "path", markdown_files(), ids=[str(p.relative_to(REPO)) for p in markdown_files()]
)
def test_relative_links_and_anchors_resolve(path: Path) -> None:
    """Every relative link in the file names a file that exists, and a heading when it has #."""
    broken = [
        f"{path.relative_to(REPO)}:{number}: {target}: {why}"
        for number, target in links(path)
        if (why := broken_link(path, target)) is not None
    ]
    assert broken == []


def test_readme_is_short() -> None:
    """README.md stays within its budget; details live in docs/."""
    size = len((REPO / "README.md").read_bytes())
    assert size <= README_MAX_BYTES, f"README.md is {size} bytes"


def test_readme_quick_start_is_the_two_commands() -> None:
    """The quick start block is deploy/quickstart then tests/run, both executable scripts."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    block = text.split("## Quick start", 1)[1].split("```sh\n", 1)[1].split("```", 1)[0]
    commands = [line.split("#", 1)[0].strip() for line in block.splitlines()]
    assert commands == ["deploy/quickstart", "tests/run"]
    for command in commands:
        script = REPO / command
        assert script.is_file() and script.stat().st_mode & 0o111, command


def _model_in(annotation: Any) -> tuple[type[BaseModel] | None, bool]:
    """The pydantic model inside a field's annotation, and whether it is a list of them."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation, False
    origin = typing.get_origin(annotation)
    for argument in typing.get_args(annotation):
        model, _ = _model_in(argument)
        if model is not None:
            return model, origin is list
    return None, False


def setting_fields(
    model: type[BaseModel], prefix: str = ""
) -> Iterator[tuple[str, str, Any, bool]]:
    """Yield (dotted name, parent name, default, in a list) for every field, nested too.

    A nested model's fields are ``parent.field``; a list of models' fields are
    ``parent[].field``. The default is None where the field has none (required).
    """
    for name, field in model.model_fields.items():
        dotted = prefix + name
        nested, is_list = _model_in(field.annotation)
        if nested is not None and is_list:
            yield dotted, prefix.rstrip("."), None, bool(prefix.endswith("[]."))
            yield from setting_fields(nested, dotted + "[].")
        elif nested is not None:
            yield from setting_fields(nested, dotted + ".")
        else:
            default = None if field.is_required() else field.get_default(call_default_factory=True)
            yield dotted, prefix.rstrip(".").removesuffix("[]"), default, "[]." in prefix


def documented_settings() -> dict[str, tuple[str, str]]:
    """docs/settings.md's table rows: setting name -> (environment cell, default cell)."""
    rows: dict[str, tuple[str, str]] = {}
    text = (REPO / "docs" / "settings.md").read_text(encoding="utf-8")
    for _, line in prose_lines(text):
        cells = [cell.strip() for cell in re.split(r"(?<!\\)\|", line)[1:-1]]
        if len(cells) == 4 and (name := re.fullmatch(r"`([a-z_.\[\]]+)`", cells[0])):
            assert name.group(1) not in rows, f"{name.group(1)} documented twice"
            rows[name.group(1)] = (cells[1], cells[2])
    return rows


def _shown(default: Any) -> str | None:
    """How the settings table writes a default in its code span, or None if it is prose."""
    if isinstance(default, bool):
        return "true" if default else "false"
    if isinstance(default, float) and default.is_integer():
        return str(int(default))
    if isinstance(default, (int, float)):
        return str(default)
    if isinstance(default, str):
        return default or '""'
    if isinstance(default, (list, dict)):
        return json.dumps(default)
    return None


def test_settings_walk_finds_nested_fields() -> None:
    """The walk reaches list items' and nested models' fields, so the check below can fail."""
    names = {name for name, *_ in setting_fields(Settings)}
    assert {"mounts", "mounts[].path", "timeouts.fs_op_s", "limits.max_connections"} <= names
    assert "timeouts" not in names and "cache" not in names


def test_every_setting_is_documented_in_docs_settings() -> None:
    """Each field of Settings, nested ones included, has a row in docs/settings.md, and no
    row names a setting that does not exist."""
    documented = documented_settings()
    fields = {name for name, *_ in setting_fields(Settings)}
    assert sorted(fields - documented.keys()) == [], "settings missing from docs/settings.md"
    assert sorted(documented.keys() - fields) == [], "rows for settings that do not exist"


def test_documented_environment_variables_and_defaults_match_the_code() -> None:
    """Each row's environment variable is the one pydantic-settings reads, and its default
    (where the table writes it as a value) is the code's default."""
    documented = documented_settings()
    wrong = []
    for name, parent, default, in_list in setting_fields(Settings):
        if name not in documented:
            continue  # reported by test_every_setting_is_documented_in_docs_settings
        environment, shown_default = documented[name]
        if not in_list:
            variable = "VEND_" + (f"{parent}__{name.rsplit('.', 1)[-1]}" if parent else name)
            if variable.upper() not in environment:
                wrong.append(f"{name}: environment {environment!r} lacks {variable.upper()}")
        if name == "mounts" or default is None or (in_list and not isinstance(default, bool)):
            continue  # the sample mounts, a computed default, or a per-mount default in prose
        shown = _shown(default)
        if shown is not None and f"`{shown}`" not in shown_default:
            wrong.append(f"{name}: default {shown_default!r}, the code's is {shown}")
    assert wrong == []


def _layout_block() -> str:
    """The code block under docs/development.md's Layout heading."""
    text = (REPO / "docs" / "development.md").read_text(encoding="utf-8")
    section = text.split("\n## Layout\n", 1)[1]
    return section.split("```\n", 1)[1].split("```", 1)[0]


def test_layout_names_every_module_of_app() -> None:
    """The layout in docs/development.md lists each module of app/ under its package, and
    names no module that is not there."""
    entries: dict[str, str] = {}
    key = ""
    for line in _layout_block().splitlines():
        if line and not line[0].isspace():
            key, _, rest = line.partition("  ")
            key = key.strip()
            entries[key] = rest
        elif key:
            entries[key] += " " + line.strip()
    app = REPO / "app"
    listed: set[Path] = set()
    for key, text in entries.items():
        if key.endswith("/"):
            listed.update(app / key / module for module in re.findall(r"\b\w+\.py\b", text))
        else:
            listed.update(app / part.strip() for part in key.split(","))
    actual = {p for p in app.rglob("*.py") if p.name != "__init__.py"}
    missing = sorted(str(p.relative_to(app)) for p in actual - listed)
    unknown = sorted(str(p.relative_to(app)) for p in listed - actual)
    assert missing == [], "modules missing from the layout"
    assert unknown == [], "the layout names modules that do not exist"


def test_tests_readme_lists_every_test_folder() -> None:
    """tests/README.md's folder table names each folder under tests/, and only those."""
    text = (REPO / "tests" / "README.md").read_text(encoding="utf-8")
    listed = set(re.findall(r"^\| `([\w-]+)/` \|", text, flags=re.MULTILINE))
    actual = {
        p.name
        for p in (REPO / "tests").iterdir()
        if p.is_dir() and not p.name.startswith(("_", "."))
    }
    assert sorted(actual - listed) == [], "folders missing from tests/README.md"
    assert sorted(listed - actual) == [], "tests/README.md lists folders that do not exist"

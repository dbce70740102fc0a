"""The import graph of ``app/`` has no circle but the ones still to be taken apart.

Every ``import`` and ``from ... import`` of an ``app`` module counts, type-only ones
(under ``if TYPE_CHECKING:``) and those inside functions included: a circle of either
kind means a reader cannot take one module without the other. The graph is read from
the source with ``ast``, so nothing is imported to check it.
"""

from __future__ import annotations

import ast

from tests.support import REPO

STILL_CIRCLES = [
    {
        "app.server.answers",
        "app.server.cold",
        "app.server.connection",
        "app.server.dispatch",
        "app.server.flow",
        "app.server.framing",
        "app.server.hotpath",
        "app.server.writer",
    },
]
"""Circles known and not yet taken apart (the restructure of the server). A circle may shrink or go; none may grow, and no other may appear."""


def _module_name(path_parts: tuple[str, ...]) -> str:
    parts = list(path_parts)
    parts[-1] = parts[-1].removesuffix(".py")
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def import_graph() -> dict[str, set[str]]:
    """Each module of ``app`` and the ``app`` modules it imports (by dotted name)."""
    files = {_module_name(p.relative_to(REPO).parts): p for p in (REPO / "app").rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        imported: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                wanted = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
            elif isinstance(node, ast.Import):
                wanted = [a.name for a in node.names]
            else:
                continue
            imported.update(w for w in wanted if w in files and w != name)
        graph[name] = imported
    return graph


def circles(graph: dict[str, set[str]]) -> list[set[str]]:
    """The graph's strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[set[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for other in sorted(graph[node]):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = set()
            while True:
                member = stack.pop()
                component.add(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(component)

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_circles_finds_a_circle_and_only_a_circle() -> None:
    """The check itself: a made-up graph's circles are found, a chain is not one."""
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert circles(graph) == [{"a", "b", "c"}]
    assert circles({"a": {"b"}, "b": set()}) == []


def test_no_import_circle_in_app_but_the_known_ones() -> None:
    """No circle outside ``STILL_CIRCLES``, and none of those grew."""
    found = circles(import_graph())
    unexpected = [c for c in found if not any(c <= known for known in STILL_CIRCLES)]
    assert unexpected == [], f"new import circles in app/: {unexpected}"


def test_the_taken_apart_circles_stay_apart() -> None:
    """serve and workers, the application and its operator endpoints, a mount and its
    batches and race-free open: no circle."""
    graph = import_graph()
    assert "app.server.serve" not in graph["app.server.workers"]
    assert "app.asgi" not in graph["app.ops.operator"]
    assert "app.server.config" in graph["app.server.workers"]
    assert "app.federation.mount" not in graph["app.federation.batch"]
    assert "app.federation.mount" not in graph["app.federation.open"]
    assert "app.federation.batch" in graph["app.federation.mount"]

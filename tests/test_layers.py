"""Imports point one way: no cycle between app's top-level packages and modules.

`make check` runs the whole contract (`[tool.importlinter]` in pyproject.toml: the layers and
this rule); this test keeps the cycle rule in the suite, with the graph library import-linter is
built on, and names the imports of every cycle it finds."""

from __future__ import annotations

import grimp


def _top(module: str) -> str:
    return ".".join(module.split(".")[:2])


def _package_imports() -> dict[tuple[str, str], list[str]]:
    """(X, Y) -> the imports "a module of X imports a module of Y", for X != Y children of app."""
    graph = grimp.build_graph("app", cache_dir=None)
    tops = graph.find_children("app")
    found: dict[tuple[str, str], list[str]] = {}
    for module in sorted(graph.modules):
        for imported in sorted(graph.find_modules_directly_imported_by(module)):
            a, b = _top(module), _top(imported)
            if a != b and a in tops and b in tops:
                found.setdefault((a, b), []).append(f"{module} -> {imported}")
    return found


def _cycles(edges: set[tuple[str, str]]) -> list[list[str]]:
    """The strongly connected groups with more than one member (Tarjan)."""
    nodes = sorted({n for edge in edges for n in edge})
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    groups: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for a, b in sorted(edges):
            if a != node:
                continue
            if b not in index:
                visit(b)
                low[node] = min(low[node], low[b])
            elif b in stack:
                low[node] = min(low[node], index[b])
        if low[node] == index[node]:
            group = stack[stack.index(node) :]
            del stack[stack.index(node) :]
            if len(group) > 1:
                groups.append(sorted(group))

    for node in nodes:
        if node not in index:
            visit(node)
    return groups


def test_no_import_cycle_between_app_s_top_level_packages() -> None:
    imports = _package_imports()
    cycles = _cycles(set(imports))
    report = []
    for group in cycles:
        report.append(f"cycle between {', '.join(group)}:")
        for (a, b), lines in sorted(imports.items()):
            if a in group and b in group:
                report.extend(f"    {line}" for line in lines)
    assert cycles == [], "\n".join(report)


def test_the_check_finds_a_cycle() -> None:
    assert _cycles({("a", "b"), ("b", "c"), ("c", "a"), ("c", "d")}) == [["a", "b", "c"]]
    assert _cycles({("a", "b"), ("b", "c")}) == []

"""The package's layout: subpackages import each other in one direction only.

Read from the source (AST), so the check is cheap and sees imports inside functions too: a
lazy import still ties two subpackages together.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "wsidet"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}


def imported(path: Path, *, top_level: bool) -> set[str]:
    """wsidet modules ``path`` imports (top level only: what runs at import, not TYPE_CHECKING)."""
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level else list(ast.walk(tree))
    out: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("wsidet"):
            out.add(node.module)
            out |= {f"{node.module}.{a.name}" for a in node.names} & MODULES.keys()
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("wsidet")}
    return out & MODULES.keys()


def subpackage(module: str) -> str:
    return ".".join(module.split(".")[:2])


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as a path that returns to its start, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (cycle := visit(nxt, [*path, nxt])):
                return cycle
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start, [start])):
            return cycle
    return None


def test_find_cycle_finds_one() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_no_import_cycle_between_modules() -> None:
    graph = {m: imported(p, top_level=True) - {m} for m, p in MODULES.items()}
    assert find_cycle(graph) is None


def test_no_import_cycle_between_subpackages() -> None:
    graph: dict[str, set[str]] = {}
    for module, path in MODULES.items():
        for other in imported(path, top_level=False):
            if subpackage(other) != subpackage(module):
                graph.setdefault(subpackage(module), set()).add(subpackage(other))
    assert find_cycle(graph) is None


@pytest.mark.parametrize(
    ("low", "high"),
    [
        ("wsidet.ops", "wsidet.methods"),
        ("wsidet.slide", "wsidet.inference"),
        ("wsidet.output", "wsidet.cohort"),
        ("wsidet.annotations", "wsidet.train"),
        ("wsidet.evaluation", "wsidet.train"),
    ],
)
def test_lower_layers_do_not_import_higher_ones(low: str, high: str) -> None:
    for module, path in MODULES.items():
        if subpackage(module) == low:
            assert not {m for m in imported(path, top_level=False) if subpackage(m) == high}, module


def body_lines(node: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    """Lines of a function without its docstring (signature included)."""
    total = (node.end_lineno or node.lineno) - node.lineno + 1
    first = node.body[0]
    docstring = isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant)
    if docstring and isinstance(first.value.value, str):  # type: ignore[attr-defined]
        total -= (first.end_lineno or first.lineno) - first.lineno + 1
    return total


@pytest.mark.parametrize("folder", ["cohort", "inference", "train"])
def test_functions_of_the_orchestrating_packages_fit_on_a_screen(folder: str) -> None:
    long = [
        f"{path.relative_to(PACKAGE)}:{node.lineno} {node.name} ({body_lines(node)} lines)"
        for path in sorted((PACKAGE / folder).rglob("*.py"))
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and body_lines(node) > 60
    ]
    assert not long


def test_every_subpackage_is_installed() -> None:
    """A package missing from pyproject's list is absent from a wheel (editable installs
    hide it)."""
    import tomllib

    config = tomllib.loads((PACKAGE.parent / "pyproject.toml").read_text())
    listed = set(config["tool"]["setuptools"]["packages"])
    found = {module_name(p.parent / "__init__.py") for p in PACKAGE.rglob("__init__.py")}
    assert found | {"wsidet.cli"} == listed

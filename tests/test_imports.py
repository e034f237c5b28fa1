"""The bnexp modules import each other one way: no import cycle, lazy (function-level) imports
included. A cycle hidden in a function still ties two modules into one (neither can be read,
tested or moved alone) and breaks when someone hoists the import. Read from the source with
``ast``: nothing is imported."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "bnexp"


def module_names(root: Path = PACKAGE) -> dict[str, Path]:
    """Every module of the package by dotted name (``bnexp/claims/__init__.py`` is
    ``bnexp.claims``)."""
    names = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        names[".".join(parts)] = path
    return names


def imported(module: str, path: Path, known: set[str]) -> set[str]:
    """The package's modules that ``module`` imports anywhere in its file (top level, in
    functions, under ``if TYPE_CHECKING`` too): ``from bnexp import x`` counts as ``bnexp.x``
    when x is a module; relative imports are resolved against the module's package."""
    is_package = path.name == "__init__.py"
    package = module if is_package else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            # each name: the submodule of that name if there is one, else the module itself
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base
                       for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in known:  # bnexp.x.y.func -> bnexp.x.y
                target = target.rpartition(".")[0]
            if target and target != module:
                found.add(target)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = module_names()
    known = set(modules)
    return {m: imported(m, p, known) for m, p in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the graph as a path (first node repeated at the end), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt):], nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_no_import_cycle_among_bnexp_modules() -> None:
    graph = import_graph()
    assert "bnexp.sweep" in graph and "bnexp.rundir" in graph
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_the_cycle_finder_sees_lazy_relative_and_package_imports(tmp_path: Path) -> None:
    root = tmp_path / "bnexp"
    (root / "sub").mkdir(parents=True)
    (root / "__init__.py").write_text("")
    (root / "a.py").write_text("def f():\n    from bnexp.sub import thing\n")
    (root / "sub" / "__init__.py").write_text("from . import inner\n")
    (root / "sub" / "inner.py").write_text("from bnexp import a\nfrom bnexp.sub import inner\n")
    modules = module_names(root)
    assert set(modules) == {"bnexp", "bnexp.a", "bnexp.sub", "bnexp.sub.inner"}
    graph = {m: imported(m, p, set(modules)) for m, p in modules.items()}
    assert graph["bnexp.a"] == {"bnexp.sub"}
    assert graph["bnexp.sub"] == {"bnexp.sub.inner"}
    assert graph["bnexp.sub.inner"] == {"bnexp.a"}
    assert find_cycle(graph) == ["bnexp.a", "bnexp.sub", "bnexp.sub.inner", "bnexp.a"]
    assert find_cycle({"x": {"y"}, "y": set()}) is None

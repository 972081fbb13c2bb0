"""The package's shape (issue 18): no import circle, eval independent of the engine, the command
modules in one direction, every method file within 200 lines.

The import graph is read from the source with ``ast``, every import included: top level, inside
functions and under ``TYPE_CHECKING``. Importing ``a.b.c`` also runs ``a/__init__``; those implicit
parent edges are not drawn (each submodule would then form a circle with the package that
re-exports it), as import-cycle linters do.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "selfsup"


def import_graph(root: Path) -> dict[str, set[str]]:
    """Module -> the package's modules it imports."""
    files = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph: dict[str, set[str]] = {name: set() for name in files}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
                base = ".".join(anchor + ([node.module] if node.module else []))
                # `from pkg import sub` imports the submodule; pkg itself only for a name defined there
                subs = [f"{base}.{alias.name}" for alias in node.names]
                targets = subs + ([base] if any(s not in files for s in subs) else [])
            else:
                continue
            graph[name].update(t for t in targets if t in files and t != name)
    return graph


def circles(graph: dict[str, set[str]]) -> list[set[str]]:
    """The groups of modules that reach each other (strongly connected components of size > 1)."""
    def reach(start: str) -> set[str]:
        seen, todo = set(), [start]
        while todo:
            for nxt in graph[todo.pop()] - seen:
                seen.add(nxt)
                todo.append(nxt)
        return seen

    reachable = {name: reach(name) for name in graph}
    groups = {frozenset(m for m in reachable[name] if name in reachable[m]) for name in graph if name in reachable[name]}
    return [set(group) for group in groups]


def test_the_graph_sees_imports_and_circles(tmp_path) -> None:
    # a negative control: a package with a circle through a function-level import
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from .b import f\n")
    (pkg / "b.py").write_text("def f():\n    from . import a\n")
    (pkg / "c.py").write_text("import pkg.a\n")
    graph = import_graph(pkg)
    assert graph["pkg.a"] == {"pkg.b"} and graph["pkg.b"] == {"pkg.a"} and graph["pkg.c"] == {"pkg.a"}
    assert circles(graph) == [{"pkg.a", "pkg.b"}]
    assert "selfsup.engine.loop" in import_graph(PACKAGE)["selfsup.engine.trainer"]


def test_no_import_circle() -> None:
    assert circles(import_graph(PACKAGE)) == []


@pytest.mark.parametrize("lower, upper", [("selfsup.eval", "selfsup.engine"), ("selfsup.commands", "selfsup.cli"),
                                          ("selfsup.methods", "selfsup.engine"), ("selfsup.runs", "selfsup.engine")])
def test_layers_import_downwards_only(lower: str, upper: str) -> None:
    graph = import_graph(PACKAGE)
    wrong = sorted(f"{src} -> {dst}" for src, dsts in graph.items() if src == lower or src.startswith(lower + ".")
                   for dst in dsts if dst == upper or dst.startswith(upper + "."))
    assert wrong == []


def test_every_method_file_is_at_most_200_lines() -> None:
    lengths = {p.name: len(p.read_text().splitlines()) for p in (PACKAGE / "methods").glob("*.py")}
    assert len(lengths) >= 15 and {name: n for name, n in lengths.items() if n > 200} == {}

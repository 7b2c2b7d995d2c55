"""The package is layered, without import cycles (imports inside functions count).

From the bottom: errors, checks and trace events; the one binding module;
backends and guest RAM; the Mapping types and the cores; MapCache; the
reference (a core with its MapCache); the tools.  A module imports only from
its own layer or below, so nothing needs an import inside a function to
break a cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "xenmapcache"

LAYERS = [
    {"errors", "_version", "_validate", "_nocopy", "trace"},
    {"_binding", "_core"},
    {"_callbacks", "backends", "ram", "xen"},
    {"_mapping", "_protocols", "_native"},
    {"cache"},
    {"reference"},
    {"_cli", "replay", "bench", "demo", "soak", "__main__", "__init__"},
]
LAYER = {module: i for i, modules in enumerate(LAYERS) for module in modules}


def imports_of(path: Path) -> set[str]:
    """The package's modules that ``path`` imports, wherever the import statement is."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1 or (node.module or "").split(".")[0] == "xenmapcache":
                parts = (node.module or "").split(".")[1 if node.level == 0 else 0 :]
                if parts and parts[0]:
                    found.add(parts[0])
                else:  # from . import x, y
                    found.update(alias.name for alias in node.names)
            elif node.level > 1:
                pytest.fail(f"{path.name}: an import from outside the package's top level")
        elif isinstance(node, ast.Import):
            found.update(a.name.split(".")[1] for a in node.names if a.name.startswith("xenmapcache."))
    return found


def graph() -> dict[str, set[str]]:
    modules = {p.stem: p for p in PACKAGE.glob("*.py")}
    return {name: imports_of(path) & (set(modules) | {"_core"}) for name, path in modules.items()}


def test_every_module_has_a_layer() -> None:
    assert set(graph()) | {"_core"} == set(LAYER)


def test_imports_go_down_the_layers() -> None:
    upward = [(m, d) for m, deps in graph().items() for d in deps if LAYER[d] > LAYER[m]]
    assert not upward, upward


def test_no_import_cycle() -> None:
    g = graph()
    state: dict[str, int] = {}  # 1: on the path, 2: done

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for d in sorted(g.get(m, ())):
            if state.get(d) == 1:
                pytest.fail("import cycle: " + " -> ".join(path[path.index(d) :] + [m, d]))
            if d not in state:
                visit(d, path + [m])
        state[m] = 2

    for m in sorted(g):
        if m not in state:
            visit(m, [])


def test_the_walk_sees_imports_inside_functions() -> None:
    # The guard of the tests above: an import written inside a function counts.
    assert "_binding" in imports_of(PACKAGE / "ram.py")

"""The packages of lit_massive/ are layers that import one way: a module imports only modules of
its own layer or of a lower one (`LAYERS`), and no chain of imports comes back to where it
started. Read from the source with `ast`: every import, those under TYPE_CHECKING and inside
functions too. docs/architecture.md describes the layers."""

from __future__ import annotations

import ast
from pathlib import Path

from helpers import REPO

PACKAGE = "lit_massive"
ROOT = REPO / PACKAGE

# bottom to top, as docs/architecture.md lists them; a module is in the layer of the longest
# dotted name here that it is or lies under
LAYERS = {
    # plain names every layer may use: errors, shared options, the version
    "lit_massive.errors": 1,
    "lit_massive.options": 1,
    "lit_massive.version": 1,
    # loading and describing models
    "lit_massive.models": 2,
    # what a forward pass records (and each block output's statistics: the massive criterion), token windows
    "lit_massive.probes": 3,
    "lit_massive.data": 3,
    # results.json: its types, readers, head rankings, markdown cells, provenance
    "lit_massive.results": 4,
    # every figure of a run, one style, and the publisher the analyses publish through (a protocol)
    "lit_massive.figures": 5,
    "lit_massive.variants": 6,
    "lit_massive.analyses": 7,
    "lit_massive.tasks": 8,
    "lit_massive.module": 9,
    # writing a run's report: results.json, TensorBoard, interrupts, tables, comparisons
    "lit_massive.report": 10,
    # the entry points
    "lit_massive.cli": 11,
    "lit_massive.api": 11,
    "lit_massive.__main__": 11,
    "lit_massive": 11,
}


def module_files() -> dict[str, Path]:
    """Every module of the package by dotted name (a package by its __init__.py)."""
    out = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = list(path.relative_to(REPO).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


MODULES = module_files()


def layer_of(name: str) -> int:
    parts = name.split(".")
    for n in range(len(parts), 0, -1):
        if ".".join(parts[:n]) in LAYERS:
            return LAYERS[".".join(parts[:n])]
    raise KeyError(name)


def _package_of(name: str) -> str:
    """The package a module's relative imports start from."""
    return name if MODULES[name].name == "__init__.py" else name.rpartition(".")[0]


def imported(name: str) -> list[tuple[int, str]]:
    """(line, module) for every import of a lit_massive module in module `name`. `from P import X`
    imports P (its __init__) unless X is a submodule of P; a name that is no module is kept
    as written (the test reports it)."""
    tree = ast.parse(MODULES[name].read_text(encoding="utf-8"), filename=str(MODULES[name]))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = _package_of(name).split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, *([base] if base else [])])
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                out.append((node.lineno, sub if sub in MODULES else base))
    ours = [(line, target) for line, target in out if target == PACKAGE or target.startswith(PACKAGE + ".")]
    return list(dict.fromkeys(ours))  # `from M import a, b`: M once


def graph() -> dict[str, list[tuple[int, str]]]:
    return {name: [(line, t) for line, t in imported(name) if t != name] for name in MODULES}


def where(name: str, line: int) -> str:
    return f"{MODULES[name].relative_to(REPO)}:{line}"


def test_every_module_has_a_layer():
    unplaced = []
    for name in MODULES:
        try:
            layer_of(name)
        except KeyError:
            unplaced.append(name)
    assert not unplaced, f"modules in no layer (add them to LAYERS): {unplaced}"


def test_imports_name_modules_that_exist():
    missing = [
        f"{where(name, line)} -> {t}" for name, edges in graph().items() for line, t in edges if t not in MODULES
    ]
    assert not missing, "imports of no lit_massive module:\n" + "\n".join(missing)


def test_no_import_runs_up():
    upward = [
        f"{where(name, line)} -> {t} (layer {layer_of(name)} imports layer {layer_of(t)})"
        for name, edges in graph().items()
        for line, t in edges
        if t in MODULES and layer_of(t) > layer_of(name)
    ]
    assert not upward, "imports from a higher layer:\n" + "\n".join(upward)


def cycles(edges: dict[str, list[tuple[int, str]]]) -> list[list[tuple[str, int, str]]]:
    """Import cycles found by a depth-first search, each as its imports (file, line, module);
    one per set of modules."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[tuple[str, int, str]] = []
    found: dict[frozenset[str], list[tuple[str, int, str]]] = {}

    def visit(name: str) -> None:
        state[name] = 1
        for line, t in edges.get(name, []):
            if t not in edges:
                continue
            path.append((name, line, t))
            if state.get(t) == 1:
                start = next(i for i, (src, _, _) in enumerate(path) if src == t)
                loop = path[start:]
                found.setdefault(frozenset(src for src, _, _ in loop), list(loop))
            elif t not in state:
                visit(t)
            path.pop()
        state[name] = 2

    for name in sorted(edges):
        if name not in state:
            visit(name)
    return list(found.values())


def test_no_import_cycle():
    found = cycles(graph())
    text = ["\n".join(f"  {where(src, line)} -> {t}" for src, line, t in loop) for loop in found]
    assert not found, "import cycles:\n" + "\n\n".join(text)


def test_a_cycle_and_an_upward_import_are_found():
    """The checks themselves: a made-up graph with a cycle through a package's __init__."""
    edges = {"p": [(1, "p.a")], "p.a": [(3, "p.b")], "p.b": [(7, "p")], "q": [(2, "p.a")]}
    (loop,) = cycles(edges)
    assert {src for src, _, _ in loop} == {"p", "p.a", "p.b"}
    assert layer_of("lit_massive.analyses.base") > layer_of("lit_massive.variants.specs")
    assert layer_of("lit_massive") == layer_of("lit_massive.cli.main")

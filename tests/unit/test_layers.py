"""The package's layout holds: each subpackage imports only from its own layer and the layers below it, no
module imports another in a cycle, and no module or function outgrows one job (400 and 60 lines)."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import dqagent

PACKAGE = Path(dqagent.__file__).resolve().parent

#: Lowest first. A module may import from its own layer and those before it, never from a later one.
LAYERS: tuple[frozenset[str], ...] = (
    frozenset({"errors"}),
    frozenset({"settings"}),
    frozenset({"core"}),
    frozenset({"systemd", "broker", "host", "report"}),
    frozenset({"agent", "sim"}),
    frozenset({"setup"}),
    frozenset({"cli"}),
)
#: Functions allowed past 60 lines, each with the reason.
LONG_FUNCTIONS: dict[str, str] = {}
#: Modules allowed past 400 lines, each with the reason.
LONG_MODULES: dict[str, str] = {}


def modules() -> Iterator[tuple[str, Path]]:
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        yield ".".join(("dqagent", *parts)).removesuffix(".__init__"), path


def layer_of(module: str) -> int | None:
    """The layer of `dqagent.<top>...`; None for the package's root modules (__init__, __main__)."""
    top = module.split(".")[1] if "." in module else ""
    for i, names in enumerate(LAYERS):
        if top in names:
            return i
    return None


def imports(path: Path) -> set[str]:
    """Every dqagent module `path` imports, at run time or for types only."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("dqagent."))
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("dqagent"):
            base = node.module
            for a in node.names:
                candidate = f"{base}.{a.name}"
                found.add(candidate if (PACKAGE / Path(*candidate.split(".")[1:])).with_suffix(".py").exists()
                          or (PACKAGE / Path(*candidate.split(".")[1:]) / "__init__.py").exists() else base)
    return found


def test_no_module_imports_from_a_higher_layer() -> None:
    wrong = []
    for name, path in modules():
        mine = layer_of(name)
        if mine is None:
            continue
        for other in imports(path):
            theirs = layer_of(other)
            if theirs is not None and theirs > mine:
                wrong.append(f"{name} ({mine}) imports {other} ({theirs})")
    assert not wrong, "\n".join(wrong)


def test_no_import_cycle_between_modules() -> None:
    graph = {name: {m for m in imports(path) if m != name} for name, path in modules()}
    state: dict[str, int] = {}
    cycles: list[str] = []

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if nxt not in graph:
                continue
            if state.get(nxt) == 1:
                cycles.append(" -> ".join([*trail[trail.index(nxt):], nxt]))
            elif nxt not in state:
                visit(nxt, [*trail, nxt])
        state[node] = 2

    for node in graph:
        if node not in state:
            visit(node, [node])
    assert not cycles, "\n".join(cycles)


def test_no_module_over_400_lines_and_no_function_over_60() -> None:
    too_long = []
    for name, path in modules():
        text = path.read_text()
        if text.count("\n") > 400 and name not in LONG_MODULES:
            too_long.append(f"{name}: {text.count(chr(10))} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = (node.end_lineno or node.lineno) - node.lineno + 1
                if length > 60 and f"{name}.{node.name}" not in LONG_FUNCTIONS:
                    too_long.append(f"{name}.{node.name}: {length} lines")
    assert not too_long, "\n".join(too_long)


def test_the_layers_name_every_subpackage() -> None:
    subpackages = {p.parent.name for p in PACKAGE.glob("*/__init__.py")}
    assert subpackages == set().union(*LAYERS) - {"errors"}, subpackages

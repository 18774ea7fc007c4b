"""Where code lives: test doubles outside the product, the bench outside the tests, one definition per fixture."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def trees(*folders: str) -> Iterator[tuple[str, ast.Module]]:
    for folder in folders:
        for path in sorted((REPO / folder).rglob("*.py")):
            yield str(path.relative_to(REPO)), ast.parse(path.read_text(), str(path))


def test_no_test_double_in_the_product() -> None:
    doubles = {(name, node.name) for name, tree in trees("dqagent") for node in ast.walk(tree)
               if isinstance(node, ast.ClassDef) and node.name.startswith(("Fake", "Recording", "Stub"))}
    assert doubles == set()


def test_dev_scripts_and_the_bench_import_nothing_from_the_tests() -> None:
    imports = set()
    for name, tree in trees("dev", "testbed"):
        for node in ast.walk(tree):
            modules = ([a.name for a in node.names] if isinstance(node, ast.Import)
                       else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            imports |= {(name, m) for m in modules if m == "tests" or m.startswith("tests.")}
    assert imports == set()


def fixtures(tree: ast.Module) -> set[str]:
    """Names of the module-level functions decorated with `pytest.fixture` (called or not)."""
    def is_fixture(d: ast.expr) -> bool:
        target = d.func if isinstance(d, ast.Call) else d
        return isinstance(target, ast.Attribute) and target.attr == "fixture"

    return {node.name for node in tree.body if isinstance(node, ast.FunctionDef)
            and any(is_fixture(d) for d in node.decorator_list)}


def test_no_test_file_redefines_a_shared_fixture() -> None:
    shared = fixtures(ast.parse((REPO / "tests" / "conftest.py").read_text()))
    redefined = {(name, f) for name, tree in trees("tests") if not name.endswith("conftest.py")
                 for f in fixtures(tree) & shared}
    assert redefined == set()

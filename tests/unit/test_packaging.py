"""What the dqagent distribution ships: the package, never the bench or the tests."""

from __future__ import annotations

import tomllib
from pathlib import Path

from setuptools import find_packages

REPO = Path(__file__).resolve().parents[2]


def test_the_distribution_ships_only_dqagent() -> None:
    find = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    shipped = find_packages(where=str(REPO), **find)
    assert "dqagent" in shipped
    assert [p for p in shipped if p.split(".")[0] != "dqagent"] == []
    # The bench is a package of its own in the checkout, which the distribution leaves out.
    assert (REPO / "testbed" / "__init__.py").is_file() and "testbed" not in shipped

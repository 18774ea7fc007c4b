"""The bench refuses, in one line, a checkout its container cannot see (instead of 40 'No such file')."""

from __future__ import annotations

from pathlib import Path

from testbed.nspawn import checkout_problem


def test_a_checkout_under_tmp_is_named_as_the_problem(tmp_path: Path) -> None:
    problem = checkout_problem(tmp_path)
    assert problem is not None and str(tmp_path) in problem and "/tmp" in problem


def test_a_checkout_on_the_root_filesystem_is_fine() -> None:
    assert checkout_problem(Path("/etc")) is None

"""The pure parts of `dqagent check` and the logrotate rule install writes (the rest is tested in the
bench: tests/integration/test_check.py)."""

from __future__ import annotations

import pytest

from dqagent.settings.config import parse_settings
from dqagent.setup.check import Result, _dramatiq_args_problem, _first_difference, stop_timeout_mismatch
from dqagent.setup.layout import logrotate_rule


@pytest.mark.parametrize(("command", "expected"), [
    ("/v/bin/python -m dramatiq --processes 1 --threads 5 app.tasks", (True, "")),
    ("/v/bin/dramatiq app.tasks --processes 2", (True, "")),
    ("/bin/sleep infinity", (False, "")),
])
def test_dramatiq_command_lines_parse_with_dramatiqs_parser(command: str, expected: tuple[bool, str]) -> None:
    assert _dramatiq_args_problem(command) == expected


def test_a_bad_dramatiq_command_line_gives_dramatiqs_own_one_line() -> None:
    is_dramatiq, problem = _dramatiq_args_problem("python -m dramatiq --processes many app")
    assert is_dramatiq and "argument --processes/-p: invalid int value: 'many'" in problem
    assert "required: broker, module" in _dramatiq_args_problem("python -m dramatiq")[1]


def test_stop_timeout_mismatch_names_both_values_or_nothing() -> None:
    s = parse_settings({"GRACEFUL_SHUTDOWN_TIMEOUT": "12"})
    assert stop_timeout_mismatch(12.0, s) == ""
    line = stop_timeout_mismatch(30.0, s)
    assert line.startswith("dramatiq-worker@.service has TimeoutStopSec=30s in systemd but "
                           "GRACEFUL_SHUTDOWN_TIMEOUT=12:") and "fix: dqagent install" in line


def test_first_difference_and_result_lines() -> None:
    assert _first_difference("a\nTimeoutStopSec=5s\n", "a\nTimeoutStopSec=12s\n") == \
        "has 'TimeoutStopSec=5s', should have 'TimeoutStopSec=12s'"
    assert Result(True, "x").line() == "ok: x" and Result(False, "y").line() == "FAIL: y"


@pytest.mark.parametrize(("log_file", "paths"), [
    ("process_manager.log", "/var/log/dqagent/*.log {"),
    ("", "/var/log/dqagent/*.log {"),
    ("agent.txt", '/var/log/dqagent/*.log "/var/log/dqagent/agent.txt" {'),
    ("sub/agent.log", '/var/log/dqagent/*.log "/var/log/dqagent/sub/agent.log" {'),
    ("/srv/logs/dq.log", '/var/log/dqagent/*.log "/srv/logs/dq.log" {'),
])
def test_logrotate_rule_covers_log_file_without_copytruncate(log_file: str, paths: str) -> None:
    rule = logrotate_rule(log_file)
    assert paths in rule.splitlines()
    body = rule.split("{", 1)[1]
    assert "copytruncate" not in body and "su dqagent dqagent" in body

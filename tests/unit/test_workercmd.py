"""DRAMATIQ_COMMAND read with Dramatiq's own parser: defaults, command forms, rejections, warnings."""

from __future__ import annotations

import pytest
from dramatiq.cli import make_argument_parser

from dqagent.errors import ConfigError
from dqagent.settings.config import parse_settings
from dqagent.settings.workercmd import WorkerShape, dramatiq_args, startup_warnings, worker_shape


def test_defaults_are_dramatiqs_own() -> None:
    # Dramatiq's parser itself: --processes defaults to the CPU count, --threads to 8, 600 000 ms.
    defaults = make_argument_parser().parse_args(["app"])
    shape = worker_shape("dramatiq app", cpu_count=6)
    assert shape == WorkerShape(processes=6, threads=defaults.threads, queues=None,
                                shutdown_timeout_s=defaults.worker_shutdown_timeout / 1000, is_dramatiq=True)
    assert (shape.threads, shape.shutdown_timeout_s) == (8, 600)
    assert (shape.capacity, shape.prefetch) == (6 * 8, 6 * 2 * 8)
    assert worker_shape("dramatiq app", cpu_count=None).processes == 1  # os.cpu_count() may be None


@pytest.mark.parametrize("command", [
    "dramatiq app -p 4 -t 2",
    "/srv/venv/bin/dramatiq --processes 4 --threads 2 app",
    "python -m dramatiq --processes=4 --threads=2 app",
    "/srv/venv/bin/python3 -m dramatiq -p4 -t2 app.workers",
    "python3.11 -u -X dev -m dramatiq --proc 4 --threads 2 app",  # argparse prefixes, as Dramatiq allows
    "python3 -mdramatiq --path /srv/app -p 4 -t 2 app",
])
def test_command_forms(command: str) -> None:
    shape = worker_shape(command, cpu_count=64)
    assert (shape.processes, shape.threads, shape.is_dramatiq) == (4, 2, True)
    assert (shape.capacity, shape.prefetch) == (8, 16)


def test_later_flags_win_and_queues_are_read() -> None:
    shape = worker_shape("dramatiq -t 3 --threads 5 app --queues a b --worker-shutdown-timeout 20000", 2)
    assert (shape.threads, shape.queues, shape.shutdown_timeout_s) == (5, ("a", "b"), 20)


@pytest.mark.parametrize("command", ["/bin/sleep infinity", "python app.py", "python -m celery worker",
                                     "/usr/bin/env dramatiq app"])
def test_a_command_that_is_not_dramatiq_gets_the_documented_fallbacks(command: str) -> None:
    assert dramatiq_args(command.split()) is None
    assert worker_shape(command, cpu_count=16) == WorkerShape(
        processes=1, threads=8, queues=None, shutdown_timeout_s=None, is_dramatiq=False)
    s = parse_settings({"DRAMATIQ_COMMAND": command, "DRAMATIQ_QUEUE_NAME": "x", "GRACEFUL_SHUTDOWN_TIMEOUT": "1"})
    assert startup_warnings(s, 16) == []


@pytest.mark.parametrize(("command", "why"), [
    ("/srv/venv/bin/dramatiq", "the following arguments are required: broker"),
    ("dramatiq --processes many app", "invalid int value: 'many'"),
    ("dramatiq --no-such-flag app", "unrecognized arguments: --no-such-flag"),
    ("dramatiq --version", "exit instead of running workers"),
    ("python -m dramatiq --help", "exit instead of running workers"),
    ("dramatiq -p 0 app", "--processes >= 1 and --threads >= 1"),
])
def test_a_command_dramatiq_rejects_is_one_config_line(
    command: str, why: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(ConfigError) as info:
        worker_shape(command, cpu_count=4)
    message = str(info.value)
    assert message.startswith("invalid DRAMATIQ_COMMAND=") and why in message and "\n" not in message
    assert capsys.readouterr() == ("", "")  # argparse's usage and help text do not leak


def test_queues_that_do_not_match_the_watched_queues_warn_once() -> None:
    def warnings(queues: str, flag: str) -> list[str]:
        s = parse_settings({"DRAMATIQ_QUEUE_NAME": queues, "GRACEFUL_SHUTDOWN_TIMEOUT": "700",
                            "DRAMATIQ_COMMAND": f"python -m dramatiq -p 1 app {flag}".strip()})
        return startup_warnings(s, 4)

    assert warnings("a,b", "") == []  # no --queues: every queue is consumed
    assert warnings("a,b", "--queues b a") == []
    [unserved] = warnings("a,b", "--queues a")
    assert "scales on b, which these workers never consume" in unserved
    [unwatched] = warnings("a", "-Q a c")
    assert "also consume c" in unwatched and "DRAMATIQ_QUEUE_NAME=a" in unwatched


def test_startup_warnings_carry_the_shutdown_warning() -> None:
    s = parse_settings({"DRAMATIQ_COMMAND": "dramatiq app -Q other", "DRAMATIQ_QUEUE_NAME": "q"})
    found = startup_warnings(s, 1)
    assert len(found) == 2 and "GRACEFUL_SHUTDOWN_TIMEOUT=30s" in found[0] and "--queues other" in found[1]

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from dqagent.report import logs
from dqagent.settings.workercmd import command_argv, shutdown_warning, worker_shape

SEED = "python -m dramatiq --processes 1 --threads 5 --verbose backend.dramatiq_app.workers.subtask"


def test_seed_command_is_killed_before_dramatiqs_own_timeout() -> None:
    shape = worker_shape(SEED, 4)
    assert shape.shutdown_timeout_s == 600
    warning = shutdown_warning(shape, 30)
    assert "GRACEFUL_SHUTDOWN_TIMEOUT=30s" in warning and "600s" in warning and "\n" not in warning


@pytest.mark.parametrize("flag", ["--worker-shutdown-timeout 20000", "--worker-shutdown-timeout=20000"])
def test_no_warning_when_dramatiq_gives_up_first(flag: str) -> None:
    shape = worker_shape(f"{SEED} {flag}", 4)
    assert shape.shutdown_timeout_s == 20
    assert shutdown_warning(shape, 30) == ""


def test_command_is_split_like_a_shell_without_a_shell() -> None:
    assert command_argv("/opt/venv/bin/python -m dramatiq 'my app'") == [
        "/opt/venv/bin/python", "-m", "dramatiq", "my app"]


def test_log_file_relative_paths_go_under_the_logs_directory(tmp_path: Path) -> None:
    assert logs.resolve_log_file("") is None
    assert logs.resolve_log_file("/abs/x.log") == Path("/abs/x.log")
    assert logs.resolve_log_file("process_manager.log") == logs.DEFAULT_LOG_DIR / "process_manager.log"


def test_console_and_file_lines_carry_fields_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "agent.log"
    note = logs.setup("INFO", str(target))
    assert note == ""
    logging.getLogger("dqagent.test").info("scale up by %d\nto %d", 1, 3,
                                           extra=logs.event("scale_up", workers=2, target=3))
    logging.getLogger("dqagent.test").debug("hidden at INFO")
    for handler in logging.getLogger().handlers:
        handler.flush()
    line = target.read_text().strip()
    assert "\n" not in line
    assert line.endswith("scale up by 1 to 3 event=scale_up workers=2 target=3")
    assert "hidden" not in target.read_text()
    assert "event=scale_up" in capsys.readouterr().err
    _close_handlers()


def test_unwritable_log_file_is_a_note_not_a_crash(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("")
    note = logs.setup("INFO", str(tmp_path / "f" / "x.log"))
    assert "not writable" in note
    _close_handlers()


def _close_handlers() -> None:
    for handler in list(logging.getLogger().handlers):
        handler.close()
        logging.getLogger().removeHandler(handler)

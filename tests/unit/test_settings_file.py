"""Which settings file each command reads: the service's, except `start` by hand."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from dqagent.cli.status import render_json, render_text
from dqagent.settings import sources

COMMANDS = ["status", "scale-up", "scale-down", "check", "install", "worker-exec", "reload"]


@pytest.fixture
def dirs(tmp_path: Path) -> tuple[Path, Path]:
    """An old manager's directory with its own .env, and the service's system file."""
    cwd = tmp_path / "old-manager"
    cwd.mkdir()
    (cwd / ".env").write_text("DRAMATIQ_QUEUE_NAME=local_queue\n")
    system = tmp_path / "etc" / "dqagent.env"
    system.parent.mkdir()
    system.write_text("DRAMATIQ_QUEUE_NAME=service_queue\n")
    return cwd, system


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_but_start_reads_the_service_file(dirs: tuple[Path, Path], command: str) -> None:
    cwd, system = dirs
    loaded = sources.load(None, environ={}, cwd=cwd, command=command, system_file=system)
    assert loaded.env_file == system and loaded.settings.queue_names == ("service_queue",)


def test_start_by_hand_keeps_the_old_managers_local_env(dirs: tuple[Path, Path]) -> None:
    cwd, system = dirs
    loaded = sources.load(None, environ={}, cwd=cwd, command="start", system_file=system)
    assert loaded.env_file == cwd / ".env" and loaded.settings.queue_names == ("local_queue",)
    # Without a local .env, start falls back to the service's file
    (cwd / ".env").unlink()
    assert sources.default_env_file(cwd, "start", system) == system


def test_env_file_flag_wins_for_every_command(dirs: tuple[Path, Path], tmp_path: Path) -> None:
    cwd, system = dirs
    chosen = tmp_path / "chosen.env"
    chosen.write_text("DRAMATIQ_QUEUE_NAME=chosen\n")
    for command in [*COMMANDS, "start"]:
        loaded = sources.load(chosen, environ={}, cwd=cwd, command=command, system_file=system)
        assert loaded.env_file == chosen and loaded.settings.queue_names == ("chosen",)


def test_no_file_at_all_means_defaults_and_says_so(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("DRAMATIQ_QUEUE_NAME=local_queue\n")
    loaded = sources.load(None, environ={}, cwd=tmp_path, command="status", system_file=tmp_path / "absent.env")
    assert loaded.env_file is None and loaded.settings.queue_names == ("nietest_subtask",)
    assert sources.describe_source(loaded.env_file) == "none: defaults"


def _report(env_file: Path | None) -> dict[str, object]:
    from dqagent.cli import status

    offline_redis = {"REDIS_HOST": "127.0.0.1", "REDIS_PORT": "1", "REDIS_PASSWORD_FILE": ""}
    settings = sources.load(None, environ=offline_redis, system_file=Path("/nonexistent")).settings
    loaded = sources.Loaded(settings, env_file, "")

    async def offline() -> dict[str, object]:
        # Nothing listens on this bus or Redis: each source reports itself unavailable.
        return await status.collect(loaded, "unix:path=/nonexistent/bus")

    return asyncio.run(offline())


@pytest.mark.parametrize(("env_file", "text", "json_value"),
                         [(Path("/etc/dqagent/dqagent.env"), "settings: /etc/dqagent/dqagent.env",
                           "/etc/dqagent/dqagent.env"),
                          (None, "settings: none: defaults", None)])
def test_status_names_the_file_it_read(env_file: Path | None, text: str, json_value: str | None) -> None:
    report = _report(env_file)
    assert text in render_text(report).splitlines()
    assert json.loads(render_json(report))["settings_file"] == json_value

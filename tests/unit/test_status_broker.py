"""`dqagent status` reads the broker in a child process (`dqagent.cli.status_broker`): the answer comes back,
the child is reaped, and without fork the read runs in this process (the bench tests read a real Redis)."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from dqagent.cli.status_broker import Pending
from dqagent.settings import sources


def loaded(tmp_path: Path) -> sources.Loaded:
    env = tmp_path / "dqagent.env"
    env.write_text("DRAMATIQ_QUEUE_NAME=q\nREDIS_PORT=1\nREDIS_TIMEOUT=1\nREDIS_PASSWORD_FILE=\n")
    return sources.load(env, environ={})


def test_the_child_reads_answers_and_is_reaped(tmp_path: Path) -> None:
    got = loaded(tmp_path)
    pending = Pending.start(got, got.pools)
    assert pending.pid > 0  # forked
    answer = asyncio.run(pending.result())
    assert "127.0.0.1:1" in answer["report"]["redis_error"] or "localhost:1" in answer["report"]["redis_error"]
    with pytest.raises(ChildProcessError):
        os.waitpid(pending.pid, os.WNOHANG)  # reaped: no zombie left


def test_without_fork_the_read_runs_here(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_fork() -> int:
        raise OSError(11, "Resource temporarily unavailable")

    monkeypatch.setattr(os, "fork", no_fork)
    got = loaded(tmp_path)
    pending = Pending.start(got, got.pools)
    assert pending.pid == 0
    assert "redis_error" in asyncio.run(pending.result())["report"]

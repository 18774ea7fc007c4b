"""`dqagent check` checks every pool of pools.d, each line naming the pool; a bad pool file is one line naming
the file and the key, and exit 78."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from dqagent.setup import check


def _env(tmp_path: Path, **pools: str) -> Path:
    env = tmp_path / "dqagent.env"
    env.write_text(f"DRAMATIQ_COMMAND=/bin/true\nWORKER_DIRECTORY={tmp_path}\n")
    (tmp_path / "pools.d").mkdir()
    for name, text in pools.items():
        (tmp_path / "pools.d" / f"{name}.env").write_text(text)
    return env


def test_every_pool_is_checked_and_named(tmp_path: Path) -> None:
    env = _env(tmp_path, io="DRAMATIQ_QUEUE_NAME=io\nDRAMATIQ_COMMAND=/no/such/python -m dramatiq app\n"
               "WORKER_USER=no_such_user_x\nWORKER_DIRECTORY=/no/such/dir\n",
               cpu="DRAMATIQ_QUEUE_NAME=cpu\nDRAMATIQ_COMMAND=/bin/true\nWORKER_USER=nobody\n")
    lines = [r.line() for r in asyncio.run(check.run_checks(env, offline=True))]
    io = [line for line in lines if "pool io" in line]
    assert any(line.startswith("ok: pool io (") and "parses with Dramatiq's argument parser" in line for line in io)
    assert any(line.startswith("FAIL: pool io (") and "WORKER_USER=no_such_user_x does not exist" in line
               for line in io)
    assert any(line.startswith("FAIL: pool io (") and "/no/such/dir" in line for line in io), io
    assert any(line.startswith("FAIL: pool io (") and "/no/such/python" in line for line in io), io
    assert any(line.startswith("FAIL: pool io: ") and "drop-ins missing" in line for line in io), io
    assert [line for line in lines if "pool cpu (" in line and "WORKER_USER=nobody does not exist" in line] == []
    assert any(line.startswith("ok: pool cpu (") and "runs /bin/true" in line for line in lines)


@pytest.mark.parametrize(("text", "key"), [("DRAMATIQ_QUEUE_NAME=io\nREDIS_HOST=x\n", "REDIS_HOST"),
                                           ("DRAMATIQ_QUEUE_NAME=io\nMIN_PROCESSES=x\n", "MIN_PROCESSES"),
                                           ("DRAMATIQ_QUEUE_NAME=io\nWORKER_USRE=x\n", "WORKER_USRE")])
def test_a_bad_pool_file_is_one_line_naming_the_file_and_key_and_exit_78(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, key: str) -> None:
    env = _env(tmp_path, io=text)
    assert check.check(env, offline=True) == 78
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and out.startswith("FAIL: ")
    assert f"{tmp_path}/pools.d/io.env: {key}" in out and out.rstrip().endswith(f"fix: edit {tmp_path}/pools.d/io.env")

"""`dqagent worker-exec [INSTANCE]` runs the command of the instance's pool (`worker-exec %i` in the template)."""

from __future__ import annotations

import os
import pwd
import subprocess
import sys
from pathlib import Path

import pytest

from dqagent.cli.main import _worker_exec_args, build_parser
from dqagent.setup.pooldropins import POOL_ENV


def _me() -> str:
    return pwd.getpwuid(os.getuid()).pw_name


@pytest.fixture
def etc(tmp_path: Path) -> Path:
    """dqagent.env for the default pool, pools.d/io.env for pool io, each with its own directory."""
    for d in ("default-dir", "io-dir"):
        (tmp_path / d).mkdir()
    (tmp_path / "dqagent.env").write_text(f"DRAMATIQ_COMMAND=/bin/sh -c 'echo default; pwd'\n"
                                          f"WORKER_DIRECTORY={tmp_path}/default-dir\nMIN_PROCESSES=1\n")
    (tmp_path / "pools.d").mkdir()
    (tmp_path / "pools.d" / "io.env").write_text(f"DRAMATIQ_QUEUE_NAME=io\nDRAMATIQ_COMMAND=/bin/sh -c 'echo io; pwd'\n"
                                                 f"WORKER_DIRECTORY={tmp_path}/io-dir\nWORKER_USER={_me()}\n")
    return tmp_path


def _run(etc: Path, *instance: str, pool_env: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != POOL_ENV}
    if pool_env is not None:
        env[POOL_ENV] = pool_env
    return subprocess.run([sys.executable, "-m", "dqagent", "--env-file", str(etc / "dqagent.env"), "worker-exec",
                           *instance], capture_output=True, text=True, timeout=60, env=env)


@pytest.mark.parametrize("instance", [(), ("3",), ("1000",), ("dramatiq-worker@7.service",)])
def test_the_default_pool_and_an_old_template_without_instance_run_dqagent_envs_command(
        etc: Path, instance: tuple[str, ...]) -> None:
    done = _run(etc, *instance)
    assert (done.returncode, done.stdout, done.stderr) == (0, f"default\n{etc}/default-dir\n", "")


@pytest.mark.parametrize("instance", ["io-3", "io-1000", "dramatiq-worker@io-1.service"])
def test_a_pool_unit_runs_its_pool_files_command_in_its_directory(etc: Path, instance: str) -> None:
    done = _run(etc, instance, pool_env="io")
    assert (done.returncode, done.stdout, done.stderr) == (0, f"io\n{etc}/io-dir\n", "")


def test_a_unit_of_a_pool_with_no_file_is_one_line_naming_the_pool_and_exit_78(etc: Path) -> None:
    done = _run(etc, "cpu-2", pool_env="cpu")
    assert done.returncode == 78 and done.stdout == ""
    assert done.stderr.count("\n") == 1 and "'cpu'" in done.stderr and "pools.d" in done.stderr, done.stderr


@pytest.mark.parametrize("instance", ["default-3", "io-01", "io-0", "io-1001", "0", "x", "IO-3", "io-x-3", ""])
def test_an_instance_dqagent_does_not_manage_is_refused_in_one_line(etc: Path, instance: str) -> None:
    done = _run(etc, instance, pool_env="io")
    assert done.returncode == 78 and done.stdout == "" and done.stderr.count("\n") == 1, done
    assert "worker-exec instance" in done.stderr


def test_a_bad_command_in_a_pool_file_names_the_file_and_the_key(etc: Path) -> None:
    (etc / "pools.d" / "io.env").write_text("DRAMATIQ_QUEUE_NAME=io\nDRAMATIQ_COMMAND=\n")
    done = _run(etc, "io-2", pool_env="io")
    assert done.returncode == 78 and done.stderr.count("\n") == 1
    assert f"{etc}/pools.d/io.env: DRAMATIQ_COMMAND" in done.stderr, done.stderr
    assert _run(etc, "2").returncode == 0  # the default pool's workers do not read it


def test_another_pools_unreadable_file_does_not_stop_this_pools_workers(etc: Path) -> None:
    (etc / "pools.d" / "batch.env").write_bytes(b"\xff\xfe bad")
    done = _run(etc, "io-3", pool_env="io")
    assert (done.returncode, done.stdout) == (0, f"io\n{etc}/io-dir\n"), done.stderr


def test_a_pool_unit_without_its_drop_in_runs_only_as_the_pools_user(etc: Path) -> None:
    """A pool file added without `dqagent install`: systemd runs its units as the template's user."""
    warned = _run(etc, "io-3")
    assert warned.returncode == 0 and warned.stdout == f"io\n{etc}/io-dir\n"
    assert warned.stderr.count("\n") == 1 and "fix: dqagent install" in warned.stderr
    other = next(p.pw_name for p in pwd.getpwall() if p.pw_uid != os.getuid())
    text = (etc / "pools.d" / "io.env").read_text().replace(f"WORKER_USER={_me()}", f"WORKER_USER={other}")
    (etc / "pools.d" / "io.env").write_text(text)
    refused = _run(etc, "io-3")
    assert refused.returncode == 78 and refused.stdout == "" and refused.stderr.count("\n") == 1
    assert f"WORKER_USER={other}" in refused.stderr and "fix: dqagent install" in refused.stderr
    assert _run(etc, "io-3", pool_env="io").returncode == 0  # with the drop-in: systemd set the user


@pytest.mark.parametrize(("argv", "instance"), [
    (["worker-exec"], None), (["worker-exec", "io-3"], "io-3"), (["--env-file", "/e", "worker-exec", "7"], "7")])
def test_the_fast_path_reads_the_command_line_as_the_parser_does(argv: list[str], instance: str | None) -> None:
    fast = _worker_exec_args(argv)
    parsed = build_parser(simulator=False).parse_args(argv)
    assert fast is not None and (fast.command, fast.env_file, fast.instance) == (
        parsed.command, parsed.env_file, parsed.instance) and parsed.instance == instance


@pytest.mark.parametrize("argv", [["status"], ["worker-exec", "--help"], ["worker-exec", "1", "2"], ["--env-file"],
                                  ["--env-file", "x", "status"]])
def test_the_fast_path_leaves_every_other_command_line_to_the_parser(argv: list[str]) -> None:
    assert _worker_exec_args(argv) is None

"""Install's directories get explicit modes under any umask, WORKER_DIRECTORY is
given to the worker user without following a symlink, and the preflight checks the settings file.

These call install's own helpers on a scratch tree (the tests run as root, like install); the whole
install under `umask 027` runs in the bench (tests/integration/test_install.py).
"""

from __future__ import annotations

import os
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from dqagent.settings.config import parse_settings
from dqagent.setup import install
from dqagent.setup.reach import dqagent_executable, preflight

UNITS = Path(__file__).resolve().parents[2] / "packaging" / "systemd"
NOBODY = 65534

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="install's helpers chown: run as root (as ./dev/test does)")


@pytest.fixture
def hardened_umask() -> Iterator[None]:
    old = os.umask(0o027)
    try:
        yield
    finally:
        os.umask(old)


def _mode_owner(path: Path) -> tuple[int, int]:
    st = path.lstat()
    return stat.S_IMODE(st.st_mode), st.st_uid


def test_worker_directory_and_its_parents_get_explicit_modes_under_umask_027(tmp_path: Path,
                                                                           hardened_umask: None) -> None:
    workdir = tmp_path / "var" / "lib" / "dqagent" / "worker"
    assert install._make_worker_directory(workdir, NOBODY, NOBODY)
    assert _mode_owner(tmp_path / "var") == (0o755, 0)
    assert _mode_owner(tmp_path / "var" / "lib" / "dqagent") == (0o755, 0)
    assert _mode_owner(workdir) == (0o750, NOBODY)
    assert not install._make_worker_directory(workdir, 0, 0)  # existing: left as it is
    assert _mode_owner(workdir) == (0o750, NOBODY)


def test_install_runs_under_its_own_umask_and_restores_the_callers(monkeypatch: pytest.MonkeyPatch,
                                                                  hardened_umask: None) -> None:
    seen = []
    monkeypatch.setattr(install, "_install", lambda *args: seen.append(os.umask(0o022)) or 0)
    assert install.install(parse_settings({})) == 0
    assert seen == [0o022]
    assert os.umask(0o027) == 0o027


def test_a_symlink_at_worker_directory_is_never_followed_nor_chowned(tmp_path: Path) -> None:
    victim = tmp_path / "etc"
    victim.mkdir(mode=0o755)
    (tmp_path / "work").symlink_to(victim)
    assert not install._make_worker_directory(tmp_path / "work", NOBODY, NOBODY)
    assert _mode_owner(victim) == (0o755, 0)


def test_a_symlink_swapped_in_between_mkdir_and_chown_is_not_followed(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Whoever may write WORKER_DIRECTORY's parent replaces the new directory with a symlink to /etc (say)
    right after install's mkdir: the old chown followed it and gave /etc to the worker user."""
    victim = tmp_path / "etc"
    victim.mkdir(mode=0o755)
    workdir = tmp_path / "srv" / "work"
    real_mkdir = os.mkdir

    def racing_mkdir(path: str | os.PathLike[str], mode: int = 0o777) -> None:
        real_mkdir(path, mode)
        if Path(path) == workdir:
            os.rmdir(path)
            os.symlink(victim, path)

    monkeypatch.setattr(os, "mkdir", racing_mkdir)
    with pytest.raises(OSError):
        install._make_worker_directory(workdir, NOBODY, NOBODY)
    assert _mode_owner(victim) == (0o755, 0)


@pytest.fixture
def settings_dir() -> Iterator[Path]:
    """A directory outside /tmp (which the units' PrivateTmp= hides) for a settings file."""
    with tempfile.TemporaryDirectory(dir="/run") as d:
        os.chmod(d, 0o755)
        yield Path(d)


@pytest.mark.parametrize(("dir_mode", "file_mode", "says"), [
    (0o755, 0o640, "not readable (the settings file) by user"),
    (0o750, 0o644, "not traversable (on the way to the settings file) by user"),
])
def test_preflight_refuses_a_settings_file_the_service_users_cannot_read(settings_dir: Path, dir_mode: int,
                                                                        file_mode: int, says: str) -> None:
    env = settings_dir / "etc-dqagent" / "dqagent.env"
    env.parent.mkdir()
    env.write_text("")
    env.chmod(file_mode)
    env.parent.chmod(dir_mode)
    s = parse_settings({"DRAMATIQ_COMMAND": "/bin/sleep 1", "WORKER_DIRECTORY": "/"})
    pre = preflight(s, dqagent_executable(), (UNITS / "dqagent.service").read_text(),
                    (UNITS / "dramatiq-worker@.service").read_text(), settings_file=str(env))
    lines = [r.line() for r in pre.refusals if "the settings file" in r.line()]
    assert any(says in line and "dqagent.service" in line for line in lines), lines
    assert any(says in line and "dramatiq-worker@.service" in line for line in lines), lines
    env.parent.chmod(0o755)
    env.chmod(0o644)
    pre = preflight(s, dqagent_executable(), (UNITS / "dqagent.service").read_text(),
                    (UNITS / "dramatiq-worker@.service").read_text(), settings_file=str(env))
    assert not [r for r in pre.refusals if "the settings file" in r.line()]

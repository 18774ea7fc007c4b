"""dqagent.setup.reach on a tree made in tmp_path: command lookup like execvp, shebangs, venvs."""

from __future__ import annotations

from pathlib import Path

from dqagent.setup.reach import find_command, interpreter_needs, shebang, venv_home_prefix, venv_of


def _venv(root: Path, home: Path) -> Path:
    (root / "bin").mkdir(parents=True)
    (root / "pyvenv.cfg").write_text(f"home = {home / 'bin'}\ninclude-system-site-packages = false\n")
    (home / "bin").mkdir(parents=True)
    (home / "lib").mkdir()
    real = home / "bin" / "python3.11"
    real.write_text("")
    real.chmod(0o755)
    (root / "bin" / "python").symlink_to(real)
    script = root / "bin" / "dramatiq"
    script.write_text(f"#!{root / 'bin' / 'python'}\nimport sys\n")
    script.chmod(0o755)
    return root


def test_command_lookup_follows_execvp(tmp_path: Path) -> None:
    venv = _venv(tmp_path / "app" / "venv", tmp_path / "pyenv")
    path = str(venv / "bin")
    assert find_command("dramatiq", "/", path=path) == str(venv / "bin" / "dramatiq")
    assert find_command("nope", "/", path=path) is None
    # a relative path with a slash is relative to WORKER_DIRECTORY (worker-exec enters it first)
    assert find_command("venv/bin/python", str(tmp_path / "app")) == str(venv / "bin" / "python")


def test_script_needs_its_venv_and_the_base_interpreter(tmp_path: Path) -> None:
    venv = _venv(tmp_path / "app" / "venv", tmp_path / "pyenv")
    assert shebang(str(venv / "bin" / "dramatiq")) == str(venv / "bin" / "python")
    assert venv_of(str(venv / "bin" / "dramatiq")) == str(venv)
    assert venv_home_prefix(str(venv)) == str((tmp_path / "pyenv").resolve())
    needs = interpreter_needs(str(venv / "bin" / "dramatiq"), "cmd")
    paths = {n.path: n.scope for n in needs}
    real_python = str((tmp_path / "pyenv" / "bin" / "python3.11").resolve())
    assert paths[str(venv / "bin" / "dramatiq")] == str(venv)
    assert paths[str(venv / "bin" / "python")] == str(venv)
    assert real_python in paths  # the symlink's target, where the kernel really executes
    assert paths[str((tmp_path / "pyenv" / "lib").resolve())] == str((tmp_path / "pyenv").resolve())


def test_metrics_textfile_directory_is_a_write_need_and_refused_under_tmp() -> None:
    from dqagent.settings.config import parse_settings
    from dqagent.setup.reach import dqagent_executable, metrics_needs, preflight
    from dqagent.setup.sandbox import Access

    assert metrics_needs(parse_settings({})) == []
    (need,) = metrics_needs(parse_settings({"METRICS_TEXTFILE": "/var/lib/node-exporter/dqagent.prom"}))
    assert (need.path, need.access) == ("/var/lib/node-exporter", Access.WRITE)
    units = Path(__file__).resolve().parents[2] / "packaging" / "systemd"
    s = parse_settings({"METRICS_TEXTFILE": "/tmp/dqagent-test/dqagent.prom", "DRAMATIQ_COMMAND": "/bin/sleep 1",
                        "WORKER_DIRECTORY": "/"})
    pre = preflight(s, dqagent_executable(), (units / "dqagent.service").read_text(),
                    (units / "dramatiq-worker@.service").read_text())
    lines = [r.line() for r in pre.refusals]
    assert any(line.startswith("/tmp/dqagent-test: METRICS_TEXTFILE's directory is under /tmp, which "
                               "dqagent.service cannot see (PrivateTmp=yes") for line in lines), lines

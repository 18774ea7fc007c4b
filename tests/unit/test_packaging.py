"""What the dqagent distribution ships: the package, never the bench or the tests."""

from __future__ import annotations

import tomllib
from pathlib import Path

from setuptools import find_packages

REPO = Path(__file__).resolve().parents[2]


def test_the_distribution_ships_only_dqagent() -> None:
    find = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    shipped = find_packages(where=str(REPO), **find)
    assert "dqagent" in shipped
    assert [p for p in shipped if p.split(".")[0] != "dqagent"] == []
    # The bench is a package of its own in the checkout, which the distribution leaves out.
    assert (REPO / "testbed" / "__init__.py").is_file() and "testbed" not in shipped


def test_pip_install_dqagent_alone_pulls_no_agent_dependency() -> None:
    """The app-side middleware (`dqagent.dramatiq`) installs with Dramatiq only; the agent's own dependencies
    (systemd, D-Bus, Redis, notify, dotenv, Prometheus) are the `agent` extra, and the command says so."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    names = {d.split(">")[0].split("[")[0].split("=")[0].strip().lower() for d in project["dependencies"]}
    assert names == {"dramatiq"}
    agent = {d.split(">")[0].split("[")[0].strip().lower() for d in project["optional-dependencies"]["agent"]}
    assert {"dbus-fast", "systemd-python", "redis", "sdnotify", "python-dotenv", "prometheus-client"} <= agent
    assert project["scripts"]["dqagent"] == "dqagent.cli.entry:main"


def test_the_command_names_the_extra_when_the_agent_dependencies_are_missing() -> None:
    import subprocess
    import sys

    code = ("import sys\n"
            "class Block:\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name.split('.')[0] == 'dotenv': raise ModuleNotFoundError(name=name)\n"
            "sys.meta_path.insert(0, Block())\n"
            "from dqagent.cli.entry import main\n"
            "sys.exit(main())\n")
    done = subprocess.run([sys.executable, "-c", code, "status"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 69, done.stderr
    assert done.stderr.strip().splitlines() == [
        "dqagent: the agent's dependencies are not installed (no module 'dotenv'): pip install 'dqagent[agent]'"]

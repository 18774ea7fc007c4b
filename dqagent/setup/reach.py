"""Which paths the two units need on this host, and whether their users can reach them (the I/O side
of `dqagent.setup.sandbox`): shared by `dqagent install` (refuse before writing) and `dqagent check`.

Paths are resolved as the kernel and Python will at run time: symlinks followed (`os.path.realpath`),
the dqagent script's shebang interpreter and its venv, the interpreter's own prefix (pyenv, uv, a
`--copies` venv), the package directory (an editable install points into the checkout) and the
import path; for the workers also `DRAMATIQ_COMMAND`'s executable, found on the PATH the way
`execvp` finds it after `worker-exec` entered `WORKER_DIRECTORY`, and `WORKER_DIRECTORY` itself.
"""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import sys
from dataclasses import dataclass, replace
from pathlib import Path

import dqagent
from dqagent.settings.config import Settings
from dqagent.settings.sources import SYSTEM_ENV_FILE
from dqagent.settings.workercmd import command_argv
from dqagent.setup.sandbox import Access, Need, Plan, Refusal, Sandbox, Stat, Who, access_problem, chain, plan

#: PATH of a system service started by systemd (the workers' PATH unless worker.env sets another).
SERVICE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
AGENT_USER = "dqagent"


def dqagent_executable() -> str:
    """The absolute path of the `dqagent` script of this installation (not resolved)."""
    candidate = Path(sys.executable).parent / "dqagent"
    if candidate.exists():
        return str(candidate)
    found = shutil.which("dqagent")
    if found:
        return os.path.abspath(found)
    return os.path.abspath(sys.argv[0])


def shebang(path: str) -> str | None:
    """The interpreter named on a script's `#!` line (`/usr/bin/env X` resolved on PATH), or None."""
    try:
        with open(path, "rb") as f:
            first = f.readline(512)
    except OSError:
        return None
    if not first.startswith(b"#!"):
        return None
    words = first[2:].decode(errors="replace").split()
    if not words:
        return None
    if os.path.basename(words[0]) == "env" and len(words) > 1:
        return shutil.which(words[1], path=SERVICE_PATH)
    return words[0]


def venv_of(executable: str) -> str | None:
    """The venv directory holding `executable` (`<venv>/bin/x` beside `<venv>/pyvenv.cfg`), or None."""
    root = Path(executable).parent.parent
    return str(root) if (root / "pyvenv.cfg").is_file() else None


def venv_home_prefix(venv: str) -> str | None:
    """The base interpreter's prefix named by a venv's `pyvenv.cfg` (`home = <prefix>/bin`), resolved."""
    try:
        for line in (Path(venv) / "pyvenv.cfg").read_text().splitlines():
            key, _, value = line.partition("=")
            if key.strip() == "home" and value.strip():
                return os.path.realpath(os.path.join(value.strip(), os.pardir))
    except OSError:
        return None
    return None


def _real(path: str) -> str:
    return os.path.realpath(path)


def _scope(path: str, *candidates: str | None) -> str:
    for c in candidates:
        if c and Path(path).is_relative_to(c):
            return c
    return str(Path(path).parent)


def interpreter_needs(executable: str, why: str) -> list[Need]:
    """An executable, its real file, and for a Python (venv) its venv and base prefix; for a script,
    its `#!` interpreter likewise (one level)."""
    needs: list[Need] = []
    venv = venv_of(executable)
    real = _real(executable)
    needs.append(Need(executable, why, Access.EXEC, _scope(executable, venv)))
    if real != executable:
        needs.append(Need(real, f"{why} (resolved)", Access.EXEC, _scope(real, venv_of(real))))
    if venv:
        needs.append(Need(_real(venv), f"the venv of {why}", Access.READ, _real(venv)))
        prefix = venv_home_prefix(venv)
        if prefix and Path(prefix, "lib").is_dir():
            needs.append(Need(str(Path(prefix, "lib")), f"the Python prefix of {why}", Access.READ, prefix))
    interp = shebang(real)
    if interp and interp != executable:
        needs.extend(interpreter_needs(interp, f"the interpreter of {why}"))
    return needs


def agent_needs(exe: str) -> list[Need]:
    """What running `exe` (the dqagent script) needs: script, interpreter, venv, stdlib, package, imports."""
    needs = interpreter_needs(exe, "the dqagent script")
    prefix, base = _real(sys.prefix), _real(sys.base_prefix)
    stdlib = _real(os.path.dirname(os.__file__))
    needs.append(Need(stdlib, "Python's standard library", Access.READ, _scope(stdlib, base)))
    package = _real(os.path.dirname(dqagent.__file__))
    needs.append(Need(package, "the dqagent package", Access.READ, package))
    skip = {_real(p) for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p}
    skip.add(_real(os.getcwd()))
    for entry in sys.path:
        if entry and os.path.isdir(entry) and _real(entry) not in skip:
            real = _real(entry)
            needs.append(Need(real, "a directory on dqagent's import path", Access.READ,
                              _scope(real, prefix, base)))
    return list(dict.fromkeys(needs))


def find_command(argv0: str, workdir: str, path: str = SERVICE_PATH) -> str | None:
    """Where `execvp(argv0)` finds the command after `chdir(workdir)`, or None."""
    if "/" in argv0:
        full = os.path.normpath(os.path.join(workdir, argv0))
        return full if os.path.isfile(full) else None
    for d in path.split(":"):
        candidate = os.path.join(d or ".", argv0)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return None


def worker_needs(settings: Settings, exe: str) -> tuple[list[Need], list[Refusal]]:
    """What a worker needs: `dqagent worker-exec` (as the agent), the command's executable, the
    directory. A command not found is returned as a missing-path refusal."""
    needs = agent_needs(exe)
    missing: list[Refusal] = []
    workdir = settings.worker_directory
    needs.append(Need(_real(workdir), "WORKER_DIRECTORY", Access.READ, _real(workdir)))
    argv0 = command_argv(settings.dramatiq_command)[0]
    found = find_command(argv0, workdir)
    if found is not None:
        needs.extend(interpreter_needs(found, "DRAMATIQ_COMMAND's executable"))
    elif "/" in argv0:  # a path that does not exist (yet): still judged against the sandbox
        full = os.path.normpath(os.path.join(workdir, argv0))
        needs.append(Need(full, "DRAMATIQ_COMMAND's executable", Access.EXEC, str(Path(full).parent)))
    else:
        missing.append(Refusal(argv0, f"DRAMATIQ_COMMAND's executable is not found on the workers' PATH "
                               f"({SERVICE_PATH})", "use the absolute path of your venv's python in "
                               "DRAMATIQ_COMMAND", missing=True))
    return list(dict.fromkeys(needs)), missing


def metrics_needs(settings: Settings) -> list[Need]:
    """METRICS_TEXTFILE's directory, which the agent writes; none when it is not set."""
    if not settings.metrics_textfile:
        return []
    directory = _real(os.path.dirname(settings.metrics_textfile))
    return [Need(directory, "METRICS_TEXTFILE's directory", Access.WRITE, directory)]


def settings_needs(settings_file: str) -> list[Need]:
    """The settings file both units read (`--env-file` on their ExecStart=): each unit's user must read it
    (under `umask 027` a file or /etc/dqagent created 0640/0750 root:root is not)."""
    real = _real(settings_file)
    return [Need(real, "the settings file", Access.READ, str(Path(real).parent))]


def who(name: str) -> Who:
    """The user `name` with its groups, or a not-yet-created user (`uid=None`: only "other" bits apply)."""
    try:
        pw = pwd.getpwnam(name)
    except KeyError:
        return Who(name, None, frozenset())
    gids = {pw.pw_gid, *(g.gr_gid for g in grp.getgrall() if name in g.gr_mem)}
    return Who(name, pw.pw_uid, frozenset(gids))


def stats(needs: list[Need]) -> dict[str, Stat]:
    """`os.stat()` of every path and directory on the way to each need (missing ones left out)."""
    out: dict[str, Stat] = {}
    for need in needs:
        for step in chain(need.path):
            if step in out:
                continue
            try:
                st = os.stat(step)
            except OSError:
                continue
            out[step] = Stat(mode=st.st_mode, uid=st.st_uid, gid=st.st_gid, is_dir=os.path.isdir(step))
    return out


def _plan(unit: str, box: Sandbox, needs: list[Need]) -> Plan:
    """`sandbox.plan`, binding only paths that exist (a missing bind source fails the unit's start,
    and `check` reports the missing path itself); refusals and writable directories come from every need."""
    binds = plan(unit, box, [n for n in needs if os.path.exists(n.path)])
    every = plan(unit, box, needs)
    # ReadWritePaths=-dir tolerates a directory created later: rendered whether it exists or not.
    return replace(binds, refusals=every.refusals, writable=every.writable)


@dataclass(frozen=True, slots=True)
class Preflight:
    """Both units' plans, what stops the install (`refusals`) and what only `check` fails on (`missing`)."""

    agent: Plan
    worker: Plan
    refusals: tuple[Refusal, ...]
    missing: tuple[Refusal, ...]


def preflight(settings: Settings, exe: str, agent_unit: str, worker_unit: str,
              agent_unit_name: str = "dqagent.service",
              worker_unit_name: str = "dramatiq-worker@.service",
              settings_file: str = str(SYSTEM_ENV_FILE)) -> Preflight:
    """Plan both units from their (unrendered) texts and check every need as each unit's user.

    `settings_file` is the file the units name on their ExecStart= (not necessarily the `--env-file`
    this command was given: the services read theirs)."""
    a_needs = agent_needs(exe) + metrics_needs(settings) + settings_needs(settings_file)
    w_needs, not_found = worker_needs(settings, exe)
    w_needs += settings_needs(settings_file)
    a_plan = _plan(agent_unit_name, Sandbox.parse(agent_unit), a_needs)
    w_plan = _plan(worker_unit_name, Sandbox.parse(worker_unit), w_needs)
    problems: list[Refusal] = [*a_plan.refusals, *w_plan.refusals]
    missing: list[Refusal] = list(not_found)
    for unit_plan, needs, user in ((a_plan, a_needs, who(AGENT_USER)),
                                   (w_plan, w_needs, who(settings.worker_user))):
        st = stats(needs)
        for need in needs:
            problem = access_problem(need, user, unit_plan.unit, st, unit_plan.binds)
            if problem is not None:
                (missing if problem.missing else problems).append(problem)
    return Preflight(a_plan, w_plan, tuple(dict.fromkeys(problems)), tuple(dict.fromkeys(missing)))

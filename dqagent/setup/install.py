"""`dqagent install` / `dqagent uninstall`: put the units, user, polkit rule, journal catalog and settings
in place.

Idempotent: each file is written only when its content differs, and a second run says that
nothing changed. The settings file is never overwritten. systemd is reloaded and the agent
enabled/started over D-Bus (never by running systemctl); the journal's catalog index is rebuilt with
`journalctl --update-catalog` when the catalog file changes (no library call exists for it).
"""

from __future__ import annotations

import asyncio
import grp
import os
import pwd
import stat
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from dqagent.errors import EXIT_CONFIG, EXIT_FAILED, EXIT_NOPERM, EXIT_OK
from dqagent.report import catalog
from dqagent.settings.config import Settings
from dqagent.settings.pools import Pool
from dqagent.setup import pausedirs, poolinstall
from dqagent.setup.files import Report, make_worker_directory, remove_dropin, write
from dqagent.setup.files import make_worker_directory as _make_worker_directory  # noqa: F401  (tests call it here)
from dqagent.setup.layout import (
    AGENT_UNIT_FILE,
    CATALOG_FILE,
    DEFAULT_WORKER_USER,
    ENV_FILE,
    ETC,
    LOGROTATE,
    PACKAGING,
    PASSWORD_FILE,
    POLKIT_RULE,
    POLKITD,
    RABBITMQ_PASSWORD_FILE,
    SLICE_LIMITS_FILE,
    SYSUSERS,
    UNIT_DIR,
    WORKER_LIMITS_FILE,
    WORKER_TEMPLATE_FILE,
    env_template,
    logrotate_rule,
    ours,
    rendered_limits,
    rendered_units,
)
from dqagent.setup.reach import dqagent_executable, preflight
from dqagent.systemd.client import AGENT_UNIT, SystemdClient


def _password_file(report: Report, path: Path = PASSWORD_FILE) -> None:
    """A broker password file (Redis's, or RabbitMQ's): 0640 root:dqagent, so the agent re-reads it on reload
    without a root process.

    Created empty when missing (systemd's `LoadCredential=` needs it to exist). An existing regular file
    owned by root gets that group and mode (its content is the operator's and is never read or changed); a
    symlink or a file of another owner is left as it is, with a warning: the agent then sees a new password
    only at restart.
    """
    gid = grp.getgrnam("dqagent").gr_gid
    if not path.is_symlink() and not path.exists():
        write(path, "", 0o640, report, owner=(0, gid))
        return
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:  # ELOOP: a symlink, never followed by a chown/chmod of ours
        _password_file_left_alone(path)
        return
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_uid != 0:
            _password_file_left_alone(path)
        elif (st.st_gid, stat.S_IMODE(st.st_mode)) != (gid, 0o640):
            os.fchown(fd, 0, gid)
            os.fchmod(fd, 0o640)
            report.changed.append(f"{path}: now 0640 root:dqagent (the agent re-reads it on reload)")
        else:
            report.kept.append(str(path))
    finally:
        os.close(fd)


def _password_file_left_alone(path: Path) -> None:
    print(f"dqagent install: warning: {path} is not a regular file owned by root: left as it is; "
          "the agent applies a changed password at restart only, unless group dqagent can read it", file=sys.stderr)


def _update_catalog() -> None:
    """Rebuild the journal's catalog index, so `journalctl -x` explains our MESSAGE_IDs.

    There is no library or D-Bus call for this (libsystemd only reads the catalog), so it runs
    `journalctl --update-catalog`, as package scripts do. A failure only costs the explanations: warned.
    """
    try:
        subprocess.run(["journalctl", "--update-catalog"], check=True, capture_output=True, text=True)
    except (OSError, subprocess.CalledProcessError) as exc:
        detail = getattr(exc, "stderr", "") or str(exc)
        print(f"dqagent install: warning: journalctl --update-catalog failed ({' '.join(detail.split())[:200]}); "
              "journalctl -x will not explain dqagent's events until it runs", file=sys.stderr)


def _refuse(line: str) -> int:
    print(f"dqagent install: {line}", file=sys.stderr)
    return EXIT_CONFIG


#: The umask install runs under, whatever the caller's (e.g. 027 on a CIS-hardened host): directories
#: and files it creates get exactly the modes it asks for (mkdir's and open's modes are filtered by it).
INSTALL_UMASK = 0o022


def install(settings: Settings, now: bool = False, bus_address: str | None = None,
            env_file: Path | None = None) -> int:
    """Install (or bring up to date) everything dqagent needs on this host, under `INSTALL_UMASK`.

    Every check that can refuse runs before anything is written: polkitd present, WORKER_USER
    existing, every path both units need visible in their sandbox and reachable by their users
    (`dqagent.setup.reach.preflight`, the settings file included), and every value rendered into a file
    (`ConfigError`, exit 78). A refusal is one line per problem and exit status 78.
    """
    old = os.umask(INSTALL_UMASK)
    try:
        return _install(settings, now, bus_address, env_file)
    finally:
        os.umask(old)


def _install(settings: Settings, now: bool, bus_address: str | None, env_file: Path | None) -> int:
    if os.geteuid() != 0:
        print("dqagent install: must run as root", file=sys.stderr)
        return EXIT_NOPERM
    refusal = _host_refusal(settings)
    if refusal:
        return _refuse(refusal)
    pools = poolinstall.load(env_file)
    exe = dqagent_executable()
    agent_text = (PACKAGING / "dqagent.service").read_text()
    worker_text = (PACKAGING / "dramatiq-worker@.service").read_text()
    pre = preflight(settings, exe, agent_text, worker_text)
    if pre.refusals:
        for problem in pre.refusals:
            print(f"dqagent install: {problem.line()}", file=sys.stderr)
        return EXIT_CONFIG
    foreign = [p for p in rendered_limits(settings) if p.exists() and not ours(p)]
    if foreign:  # an operator's file under our name: never ours to overwrite or remove
        return _refuse(f"{foreign[0]} exists but was not written by dqagent install; fix: move it away (or rename "
                       "it) and run dqagent install again")
    # Rendered before anything is written: a value a file cannot carry is a ConfigError (exit 78) here.
    planned = poolinstall.plan(pools, UNIT_DIR, exe, agent_text, worker_text)
    for line in planned.refusals:
        print(f"dqagent install: {line}", file=sys.stderr)
    if planned.refusals:
        return EXIT_CONFIG
    files = _Rendered(rendered_units(settings, exe, pre), rendered_limits(settings), logrotate_rule(settings.log_file),
                      pools, planned)
    workdir = Path(settings.worker_directory)
    for problem in pre.missing:
        # install creates WORKER_DIRECTORY (and parents) and the settings file below
        if not workdir.is_relative_to(problem.path) and not ENV_FILE.is_relative_to(problem.path):
            print(f"dqagent install: warning: {problem.line()} (dqagent check fails until it is fixed)",
                  file=sys.stderr)
    for line in planned.warnings:
        print(f"dqagent install: warning: {line}", file=sys.stderr)
    report = Report([], [])
    failed = _write_everything(settings, files, report)
    if failed is not None:
        return failed
    if report.changed:
        asyncio.run(_reload(bus_address))
    if now:
        return _check_and_start(report, env_file, bus_address)
    report.say()
    return EXIT_OK


def _host_refusal(settings: Settings) -> str:
    """Why this host cannot take dqagent (polkitd missing, WORKER_USER missing or root), or ""."""
    if not POLKITD.exists():
        return (f"polkitd is not installed ({POLKITD} is missing): without it the polkit rule is never read and "
                "every worker start by user dqagent is refused; fix: apt-get install polkitd, then run dqagent "
                "install again")
    return poolinstall.user_refusal(settings) or pausedirs.group_refusal(settings)


@dataclass(frozen=True, slots=True)
class _Rendered:
    """The files rendered for these settings, before any is written."""

    units: dict[Path, str]
    limits: dict[Path, str | None]
    logrotate: str
    pools: tuple[Pool, ...]
    planned: poolinstall.Planned


def _write_everything(settings: Settings, files: _Rendered, report: Report) -> int | None:
    """Users, the worker directory, the units and drop-ins, the rules, the catalog, the settings and password
    files; None when done, else the exit status (after one line saying why)."""
    write(SYSUSERS, (PACKAGING / "dqagent.sysusers").read_text()
           + (f'u {DEFAULT_WORKER_USER} - "Dramatiq workers (dqagent)" /var/lib/dqagent\n'
              if poolinstall.default_user_needed(settings, files.pools) else ""), 0o644, report)
    subprocess.run(["systemd-sysusers", str(SYSUSERS)], check=True)
    report.changed.extend(pausedirs.make_pause_dirs(settings))  # `dqagent pause`'s requests, the agent's state
    worker = pwd.getpwnam(settings.worker_user)
    workdir = Path(settings.worker_directory)
    try:
        if make_worker_directory(workdir, worker.pw_uid, worker.pw_gid):
            report.changed.append(f"created {workdir}")
    except OSError as exc:
        report.say()
        return _refuse(f"cannot create WORKER_DIRECTORY {workdir} ({exc}); fix: create it yourself, owned by "
                       f"{settings.worker_user}, and run dqagent install again")
    for path, text in files.units.items():
        write(path, text, 0o644, report)
    for path, dropin in files.limits.items():
        if dropin is not None:
            write(path, dropin, 0o644, report)
        elif ours(path):  # that limit is no longer set
            remove_dropin(path)
            report.changed.append(f"removed {path}")
    stopped = poolinstall.write_all(files.pools, files.planned, UNIT_DIR, report)
    if stopped:
        report.say()
        return _refuse(stopped)
    write(POLKIT_RULE, (PACKAGING / "dqagent.rules").read_text(), 0o644, report)
    write(LOGROTATE, files.logrotate, 0o644, report)
    if write(CATALOG_FILE, catalog.render(), 0o644, report):
        _update_catalog()
    if not ENV_FILE.exists():
        # Non-secret settings: world-readable so `dqagent status` works for any user.
        write(ENV_FILE, env_template(), 0o644, report)
    _password_file(report)
    _password_file(report, RABBITMQ_PASSWORD_FILE)
    return None


def _check_and_start(report: Report, env_file: Path | None, bus_address: str | None) -> int:
    """`install --now`: run `dqagent check`; start the agent only when every check passed."""
    from dqagent.setup.check import run_checks

    failed = [r for r in asyncio.run(run_checks(env_file, bus_address=bus_address)) if not r.ok]
    if failed:
        report.say()
        for r in failed:
            print(f"dqagent install: {r.line()}", file=sys.stderr)
        print(f"dqagent install: not starting {AGENT_UNIT}: dqagent check failed", file=sys.stderr)
        return EXIT_CONFIG
    started = asyncio.run(_start_agent(bus_address))
    if started:
        report.changed.append(f"{AGENT_UNIT}: {started}")
    report.say()
    return EXIT_OK if started in ("", "started") else EXIT_FAILED


async def _start_agent(bus_address: str | None) -> str:
    """Enable and start the agent. Returns what happened ("" when it was already running)."""
    client = SystemdClient(bus_address)
    await client.connect()
    try:
        await client.manager_call("EnableUnitFiles", "asbb", [[AGENT_UNIT], False, True])
        state = await client.unit_property(AGENT_UNIT, "Unit", "ActiveState")
        if state == "active":
            return ""
        (outcome,) = await client.start_units([AGENT_UNIT], timeout_s=200)
        return "started" if outcome.ok else f"start failed ({outcome.text}): see journalctl -u dqagent"
    finally:
        client.close()


def uninstall(purge: bool = False, bus_address: str | None = None) -> int:
    """Stop the agent and every worker, then remove what `install` added."""
    if os.geteuid() != 0:
        print("dqagent uninstall: must run as root", file=sys.stderr)
        return EXIT_NOPERM
    asyncio.run(_stop_everything(bus_address))
    removed = []
    paths = [AGENT_UNIT_FILE, WORKER_TEMPLATE_FILE, POLKIT_RULE, SYSUSERS, LOGROTATE, CATALOG_FILE]
    if purge:
        paths += [ENV_FILE, PASSWORD_FILE, RABBITMQ_PASSWORD_FILE]
    for path in paths:
        if path.exists():
            path.unlink()
            removed.append(str(path))
    for path in (WORKER_LIMITS_FILE, SLICE_LIMITS_FILE):
        if ours(path):
            remove_dropin(path)
            removed.append(str(path))
    pool_dropins = poolinstall.remove_stale(UNIT_DIR, [])
    if pool_dropins:
        removed.append(f"{pool_dropins} drop-ins of pools")
    if purge and ETC.exists() and not any(ETC.iterdir()):
        ETC.rmdir()
    asyncio.run(_reload(bus_address))
    if str(CATALOG_FILE) in removed:
        _update_catalog()
    for path_text in removed:
        print(f"  removed {path_text}")
    if not purge and ENV_FILE.exists():
        print(f"  kept {ENV_FILE} and {PASSWORD_FILE} (use --purge to remove them)")
    if not removed:
        print("not installed: nothing removed")
    return EXIT_OK


async def _stop_everything(bus_address: str | None) -> None:
    client = SystemdClient(bus_address)
    await client.connect()
    try:
        if AGENT_UNIT_FILE.exists():
            await client.manager_call("DisableUnitFiles", "asb", [[AGENT_UNIT], False])
            await client.stop_units([AGENT_UNIT])
        states = await client.worker_states()
        await client.stop_units([s.unit for s in states if s.occupied])
        for s in states:
            await client.reset_failed(s.unit)
    finally:
        client.close()


async def _reload(bus_address: str | None) -> None:
    client = SystemdClient(bus_address)
    await client.connect()
    try:
        await client.daemon_reload()
    finally:
        client.close()

"""The `dqagent` command: parses arguments and wires the modules; no logic of its own.

Exit codes (dqagent.errors): 0 ok, 1 a worker action failed, 2 bad arguments, 69 system bus
unavailable, 77 permission denied, 78 invalid configuration (also: `check` found a FAIL, `install`
refused before writing anything).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from dqagent import __version__
from dqagent.cli import watch  # light: argparse, time, datetime
from dqagent.errors import (
    EXIT_CONFIG,
    EXIT_FAILED,
    EXIT_NOPERM,
    EXIT_OK,
    EXIT_UNAVAILABLE,
    AccessDeniedError,
    BusConnectionError,
    ConfigError,
    SystemdError,
)
from dqagent.report.terminal import printable, printable_tree  # tiny and pure: `re` only, which argparse loads anyway
from dqagent.settings import sources
from dqagent.settings.pools import probe_settings  # light: sources reads the pools anyway

if TYPE_CHECKING:
    import logging

    from dqagent.settings.config import Settings

# Imports are per command, inside the functions below: `worker-exec` runs at every worker start
# (before the worker's own imports, while its siblings start too) and `scale-up` is timed against
# `systemctl start`, so neither pays for asyncio, Redis, Dramatiq or the simulator it does not use.

#: Commands whose arguments never need the simulator's parser (it imports the simulator).
_NO_SIMULATOR = frozenset({"start", "status", "scale-up", "scale-down", "worker-exec", "check", "reload",
                           "install", "uninstall", "pause", "resume"})


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad argument is one line on stderr and exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
    return value


def build_parser(simulator: bool = True) -> argparse.ArgumentParser:
    """The whole command line; `simulator=False` leaves out `simulate` (whose parser imports the simulator)."""
    parser = _Parser(prog="dqagent", description="Keeps the right number of Dramatiq workers running as "
                     "dramatiq-worker@N.service units, from the backlog in the Dramatiq Redis broker.")
    parser.add_argument("--version", action="version", version=f"dqagent {__version__}")
    parser.add_argument("--env-file", type=Path, default=None,
                        help="settings file (default: /etc/dqagent/dqagent.env, the service's; "
                             "`start` by hand: ./.env first)")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    start = sub.add_parser("start", help="run the agent in the foreground (what dqagent.service runs)")
    start.add_argument("--processes", type=positive_int, default=None,
                       help="initial worker count, clamped to [MIN_PROCESSES, MAX_PROCESSES]")

    status = sub.add_parser("status", help="show queue, workers and thresholds from systemd and Redis")
    status.add_argument("--json", action="store_true", help="machine-readable, old manager's keys")
    status.add_argument("--fleet", action="store_true", help="also every member of this host's FLEET (docs/fleet.md)")
    status.add_argument("--watch", nargs="?", const=watch.DEFAULT_S, type=watch.seconds, metavar="SECONDS",
                        help=f"redraw every SECONDS (default {watch.DEFAULT_S:g}) until Ctrl+C, changes highlighted")

    for name, verb in (("scale-up", "start"), ("scale-down", "stop")):
        p = sub.add_parser(name, help=f"{verb} workers now, through systemd")
        p.add_argument("--processes", type=positive_int, default=1, help="how many (default 1)")
        p.add_argument("--pool", default=None, metavar="NAME",
                       help="the pool whose workers to " + verb + " (default: the pool of the settings file, "
                            "'default'; others: pools.d/NAME.env)")

    importlib.import_module("dqagent.cli.pauseargs").add_parsers(sub)

    wexec = sub.add_parser("worker-exec", help="(used by dramatiq-worker@.service) exec the pool's DRAMATIQ_COMMAND")
    wexec.add_argument("instance", nargs="?", default=None,
                       help="the unit's instance (%%i: N, or <pool>-N); none: the default pool (an older template)")

    chk = sub.add_parser("check", help="check settings, Redis, paths, polkit and installed units (like nginx -t)")
    chk.add_argument("--offline", action="store_true", help="skip the checks that need Redis or the system bus")
    reload = sub.add_parser("reload", help="(used by `systemctl reload dqagent`) make the running agent "
                            "re-read its settings; waits for its answer")
    reload.add_argument("--pid", type=positive_int, default=None,
                        help="the agent's PID (default: $MAINPID, which systemd sets for ExecReload=)")
    reload.add_argument("--timeout", type=positive_int, default=None,
                        help="seconds to wait for the agent's answer (default 170)")

    inst = sub.add_parser("install", help="install units, user, polkit rule and settings (root)")
    inst.add_argument("--now", action="store_true", help="also enable and start dqagent.service")
    uninst = sub.add_parser("uninstall", help="stop everything and remove what install added (root)")
    uninst.add_argument("--purge", action="store_true", help="also remove /etc/dqagent")

    if not simulator:
        return parser
    try:
        sim_cli = importlib.import_module("dqagent.sim.cli")
    except ImportError:  # the simulator is optional (plots need the `plot` extra)
        pass
    else:
        sim_cli.add_simulate_parser(sub)
    return parser


def _load(args: argparse.Namespace) -> sources.Loaded:
    """The settings for this command: `--env-file`, else the service's file (`start`: `./.env` first)."""
    return sources.load(args.env_file, command=args.command)


def needs_simulator(argv: Sequence[str]) -> bool:
    """Whether parsing `argv` may need `simulate`'s parser: yes unless another command is named
    (and no help is asked for, which lists every command)."""
    if "simulate" in argv or "-h" in argv or "--help" in argv:
        return True
    return not any(arg in _NO_SIMULATOR for arg in argv)


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    # The worker unit's own ExecStart, run at every worker start: no parser to build for it.
    fast = _worker_exec_args(argv)
    args = fast if fast is not None else build_parser(simulator=needs_simulator(argv)).parse_args(argv)
    try:
        return _dispatch(args)
    except ConfigError as exc:
        print(f"dqagent: {printable(str(exc))}", file=sys.stderr)
        return EXIT_CONFIG
    except AccessDeniedError as exc:
        print(f"dqagent: permission denied by systemd/polkit: {printable(exc.text)}", file=sys.stderr)
        return EXIT_NOPERM
    except (BusConnectionError, SystemdError) as exc:
        print(f"dqagent: {printable(str(exc))}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    except KeyboardInterrupt:
        return 130


def _exit_at_once(code: int) -> NoReturn:
    """End `scale-up`/`scale-down` without the interpreter's teardown.

    The workers it just started are Python processes starting on every core at this moment; the
    teardown (module and object finalization, tens of ms of CPU) then took 0.7-1.3 s of wall time in
    the bench, a fifth of a 50-unit scale-up. Nothing is left to clean: the jobs are systemd's and
    the bus connection is closed. Output and log handlers are flushed first.
    """
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        # e.g. `dqagent scale-up | head -1`: the reader left; the exit code stands.
        with contextlib.suppress(OSError):
            stream.flush()
    os._exit(code)


def _dispatch(args: argparse.Namespace) -> int:
    command: str = args.command
    if command == "worker-exec":
        return _worker_exec(args)
    if command == "reload":
        return _reload(args)
    if command in ("pause", "resume"):
        from dqagent.cli.pausecmd import main as pause_main

        return pause_main(args, _load(args))
    if command in ("start", "status", "scale-up", "scale-down"):
        import asyncio

        if command == "start":
            return asyncio.run(_start(args))
        if command == "status" and args.watch is not None:
            return watch.watch(lambda: asyncio.run(_status(args, _start_broker_read(args))), args.watch)
        if command == "status":
            print(asyncio.run(_status(args, _start_broker_read(args))))
            return EXIT_OK
        _exit_at_once(asyncio.run(_scale(args, up=command == "scale-up")))
    if command in ("install", "uninstall"):
        from dqagent.setup.install import install, uninstall

        if command == "install":
            return install(_load(args).settings, now=args.now, env_file=args.env_file)
        return uninstall(purge=args.purge)
    if command == "check":
        from dqagent.setup.check import check

        return check(args.env_file, offline=args.offline,
                     bus_address=os.environ.get("DQAGENT_BUS_ADDRESS") or None)
    if command == "simulate":
        code: int = importlib.import_module("dqagent.sim.cli").run_simulate(args)
        return code
    raise AssertionError(command)


def _worker_exec_args(argv: Sequence[str]) -> argparse.Namespace | None:
    """`[--env-file FILE] worker-exec [INSTANCE]` without argparse, or None for any other command line."""
    env_file = None
    if len(argv) >= 2 and argv[0] == "--env-file":
        env_file, argv = Path(argv[1]), argv[2:]
    if not argv or argv[0] != "worker-exec" or len(argv) > 2 or (len(argv) == 2 and argv[1].startswith("-")):
        return None
    return argparse.Namespace(command="worker-exec", env_file=env_file, instance=argv[1] if len(argv) == 2 else None)


def _worker_exec(args: argparse.Namespace) -> int:
    from dqagent.cli.workerexec import worker_exec

    return worker_exec(args.env_file, getattr(args, "instance", None))


async def _start(args: argparse.Namespace) -> int:
    import functools
    import logging

    from dqagent.agent import lifecycle, pausing
    from dqagent.agent.pools import policies
    from dqagent.agent.reload import Reloader, runtime_dir, warn_unknown_settings
    from dqagent.broker.redis import RedisDemandProbe
    from dqagent.core.policies import make_policy
    from dqagent.report import logs
    from dqagent.report.notify import SystemdNotifier, watchdog_interval_s
    from dqagent.settings.workercmd import worker_shape
    from dqagent.systemd.client import SystemdClient

    loaded = _load(args)
    # A reload re-reads the file read now (or looks again from the same directory when none was found).
    read_again = functools.partial(sources.load, loaded.env_file, cwd=Path.cwd(), command=args.command,
                                   reloading=True)
    s = loaded.settings
    shape = worker_shape(s.dramatiq_command, os.cpu_count())  # a command Dramatiq rejects: exit 78 here
    pool_policies = policies(loaded.pools[1:])  # so does another pool's (the error names its file)
    if s.fleet:  # fleet mode: no host id (FLEET_HOST_ID empty, /etc/machine-id unreadable): exit 78 here
        from dqagent.broker.fleetstore import host_id

        host_id(s)
    note = logs.setup(s.log_level, s.log_file)
    event = logs.event
    log = logging.getLogger("dqagent")
    if note:
        log.warning("%s", note, extra=event("log_file_unavailable"))
    if loaded.password_note:
        log.warning("%s", loaded.password_note, extra=event("password_unavailable"))
    warn_unknown_settings(loaded)
    log.info("dqagent %s: queues %s on %s, policy %s, workers %d..%d (each %d processes x %d threads%s), "
             "check every %gs, settings %s", __version__, ",".join(s.queue_names), s.redis_location(),
             s.scaling_policy, s.min_processes, s.max_processes, shape.processes, shape.threads,
             "" if shape.is_dramatiq else ", assumed: not a dramatiq command", s.check_interval_s,
             sources.describe_source(loaded.env_file))
    for pool in loaded.pools[1:]:
        ps = pool.settings
        log.info("pool %s (%s): queues %s, policy %s, workers %d..%d, priority %d", pool.name, pool.source,
                 ",".join(ps.queue_names), ps.scaling_policy, ps.min_processes, ps.max_processes, ps.pool_priority,
                 extra=event("pool_added", dqagent_pool=pool.name))
    if s.host_max_processes is not None:
        log.info("host budget: at most %d workers of all pools together (HOST_MAX_PROCESSES)", s.host_max_processes)
    await _warn_template_timeout(s, log)
    units = SystemdClient(os.environ.get("DQAGENT_BUS_ADDRESS") or None, call_timeout_s=s.dbus_timeout_s)
    await units.connect()
    probe = RedisDemandProbe(probe_settings(s, loaded.pools))
    reloader = Reloader(read_again, RedisDemandProbe, runtime_dir())
    agent = lifecycle.Agent(s, units, probe, SystemdNotifier(), make_policy(s, s.scaling_policy, shape=shape),
                  initial_processes=args.processes, watchdog_s=watchdog_interval_s(),
                  own_unit=os.environ.get("DQAGENT_UNIT", "dqagent.service"), reloader=reloader,
                  pools=loaded.pools, pool_policies=pool_policies, pause_dir=pausing.state_dir())
    try:
        return await agent.run()
    finally:
        await agent.probe.close()  # the one in use: a reload may have replaced the first
        await agent.close_fleets()
        units.close()


async def _warn_template_timeout(s: Settings, log: logging.Logger) -> None:
    """A `config_warning` when systemd's worker template stops with another timeout than the settings'
    (the template has the value from install time); nothing when it cannot be read (no template)."""
    from dqagent.errors import DqAgentError
    from dqagent.report.logs import event
    from dqagent.setup.check import stop_timeout_mismatch, template_stop_timeout_s

    try:
        loaded_s = await template_stop_timeout_s(os.environ.get("DQAGENT_BUS_ADDRESS") or None)
    except DqAgentError:
        return
    if loaded_s is None:  # no template (run by hand, not installed)
        return
    mismatch = stop_timeout_mismatch(loaded_s, s)
    if mismatch:
        log.warning("%s", mismatch, extra=event("config_warning", template_timeout_s=loaded_s))


async def _scale(args: argparse.Namespace, up: bool) -> int:
    from dqagent.settings.parsers import DEFAULT_POOL
    from dqagent.systemd.client import SystemdClient
    from dqagent.systemd.jobtable import scale_by

    pool = _load(args).pool(args.pool or DEFAULT_POOL)  # an unknown pool: ConfigError naming --pool, exit 78
    s = pool.settings
    units = SystemdClient(os.environ.get("DQAGENT_BUS_ADDRESS") or None, call_timeout_s=s.dbus_timeout_s)
    await units.connect()
    try:
        report = await scale_by(units, s, args.processes if up else -args.processes, pool=pool.name)
    finally:
        units.close()
    of_pool = "" if pool.name == DEFAULT_POOL else f" of pool {pool.name} ({pool.source})"
    if report.clamped:
        print(f"dqagent: {report.wanted} workers is outside [MIN_PROCESSES={s.min_processes}, "
              f"MAX_PROCESSES={s.max_processes}]{of_pool}: going to {report.target}", file=sys.stderr)
    if not report.lines:
        print(f"nothing to do: {report.current} workers{of_pool}")
    for line in report.lines:
        print(printable(line))
    if report.refused:
        print(f"dqagent: permission denied by systemd/polkit: run as root or as user dqagent "
              f"(uid {os.getuid()} may not start or stop workers)", file=sys.stderr)
        return EXIT_NOPERM
    return EXIT_FAILED if report.failed else EXIT_OK


def _reload(args: argparse.Namespace) -> int:
    """`dqagent reload`: 0 reloaded, 78 the agent rejected the settings (old ones in force), 1 no answer."""
    from dqagent.agent import reload
    from dqagent.report.logs import under_journal

    main_pid = os.environ.get("MAINPID", "")
    pid = args.pid if args.pid is not None else int(main_pid) if main_pid.isascii() and main_pid.isdigit() else 0
    directory = reload.runtime_dir() or reload.DEFAULT_RUNTIME_DIR
    timeout_s = float(args.timeout) if args.timeout is not None else reload.DEFAULT_TIMEOUT_S
    try:
        answer = reload.request_reload(pid, directory, timeout_s)
    except reload.ReloadError as exc:
        print(f"dqagent reload: {printable(str(exc))}", file=sys.stderr)
        return EXIT_FAILED
    except PermissionError:
        print(f"dqagent reload: may not signal pid {pid}: run as root or as user dqagent", file=sys.stderr)
        return EXIT_NOPERM
    if answer.ok:  # the message comes from the agent's answer file: written by user dqagent
        print(printable(answer.message))
        return EXIT_OK
    # Under systemd the agent's own `reload_failed` line already names the key: do not repeat it.
    print("dqagent reload: the agent kept its settings (see its reload_failed line)" if under_journal()
          else f"dqagent reload: {printable(answer.message)}", file=sys.stderr)
    return EXIT_CONFIG


def _start_broker_read(args: argparse.Namespace) -> Any:
    """`status`: the broker read forked off before the heavy imports (`dqagent.cli.status_broker`)."""
    from dqagent.cli.status_broker import Pending
    from dqagent.settings.parsers import DEFAULT_POOL
    from dqagent.settings.pools import Pool

    loaded = _load(args)
    return Pending.start(loaded, loaded.pools or (Pool(DEFAULT_POOL, loaded.settings),))


async def _status(args: argparse.Namespace, broker: Any) -> str:
    from dqagent.cli.status import collect, render_json, render_text

    loaded = broker.loaded
    report: dict[str, Any] = await collect(loaded, os.environ.get("DQAGENT_BUS_ADDRESS") or None, broker)
    if args.fleet:  # fleet mode
        from dqagent.broker.fleetstore import fleet_status

        report["fleet"] = await fleet_status(loaded.settings, report["queue_length"])
    if args.json:
        return render_json(report)
    return render_text(report) + (f"\n{_fleet_text(report['fleet'])}" if args.fleet else "")


def _fleet_text(fleet: dict[str, Any]) -> str:
    """The fleet part of `status --fleet` for a terminal: host names and errors come from Redis."""
    from dqagent.core.fleet import render_fleet

    return printable(fleet["text"]) if "error" in fleet else render_fleet(printable_tree(fleet))


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())

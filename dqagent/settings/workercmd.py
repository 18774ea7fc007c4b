"""How `DRAMATIQ_COMMAND` becomes a worker process, and what its flags imply.

The worker template runs `dqagent worker-exec`, which reads the same settings as the agent
(python-dotenv, so the old manager's `.env` with inline comments keeps working), changes to
`WORKER_DIRECTORY` and replaces itself (exec) with the command: the unit's main PID is then
Dramatiq's own main process, which is what `KillMode=mixed` sends SIGTERM to.

This is also the one place that reads the command's flags, with Dramatiq's own argument parser
(`dramatiq.cli.make_argument_parser`), so the agent sizes a worker exactly as Dramatiq will run it.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import re
import shlex
from dataclasses import dataclass
from typing import Any, NoReturn

from dqagent.errors import ConfigError
from dqagent.settings.config import Settings

#: Dramatiq's default `--threads` (dramatiq/cli.py); also the fallback for a command that is not Dramatiq.
DRAMATIQ_DEFAULT_THREADS = 8
#: Messages a Dramatiq worker process prefetches per thread from each queue it consumes:
#: `Worker.queue_prefetch = QUEUE_PREFETCH or min(worker_threads * 2, 65535)` (dramatiq/worker.py,
#: 2.2.x), one `_RedisConsumer` per queue that keeps up to that many messages unacked
#: (dramatiq/brokers/redis.py, `outstanding_message_count < self.prefetch`).
DRAMATIQ_PREFETCH_PER_THREAD = 2
DRAMATIQ_PREFETCH_LIMIT = 65535
#: Entry points that run Dramatiq's CLI (`dramatiq-gevent` shares its parser).
_ENTRY_POINTS = ("dramatiq", "dramatiq-gevent")
_PYTHON_RE = re.compile(r"(python|pypy)[0-9.]*")
#: Interpreter options that take a value (`python -X dev -m dramatiq`).
_PYTHON_OPTIONS_WITH_VALUE = ("-X", "-W", "-Q")


@dataclass(frozen=True, slots=True)
class WorkerShape:
    """What one `dramatiq-worker@N` unit runs, read from `DRAMATIQ_COMMAND` as Dramatiq parses it.

    For a command that is not a Dramatiq worker (`is_dramatiq=False`, e.g. `/bin/sleep infinity`
    in tests) the figures are fallbacks: one process of Dramatiq's default 8 threads, every queue,
    and no known shutdown timeout (so no Dramatiq-specific warning is raised for it).
    """

    #: Worker processes per unit (`--processes`; Dramatiq's default is the host's CPU count).
    processes: int
    #: Threads per process (`--threads`, default 8).
    threads: int
    #: Queues the workers consume (`--queues`); None: every queue the app declares.
    queues: tuple[str, ...] | None
    #: Dramatiq's own graceful-stop bound (`--worker-shutdown-timeout`, ms -> s); None if unknown.
    shutdown_timeout_s: float | None
    is_dramatiq: bool

    @property
    def capacity(self) -> int:
        """Messages one unit runs at once: processes x threads."""
        return self.processes * self.threads

    @property
    def prefetch(self) -> int:
        """Messages one unit holds unacked from one queue when saturated: processes x 2 x threads."""
        return self.processes * min(DRAMATIQ_PREFETCH_PER_THREAD * self.threads, DRAMATIQ_PREFETCH_LIMIT)


def command_argv(command: str) -> list[str]:
    """Split the command like a POSIX shell would, without running a shell."""
    argv = shlex.split(command)
    if not argv:
        raise ValueError("DRAMATIQ_COMMAND is empty")
    return argv


def dramatiq_args(argv: list[str]) -> list[str] | None:
    """The arguments after Dramatiq's entry point, or None if `argv` does not run Dramatiq.

    Recognised: `dramatiq ...`, `/venv/bin/dramatiq ...`, `python -m dramatiq ...`, `python3 -m dramatiq`
    (also `-mdramatiq`, with interpreter options before `-m`).
    """
    program = os.path.basename(argv[0])
    if program in _ENTRY_POINTS:
        return argv[1:]
    if not _PYTHON_RE.fullmatch(program):
        return None
    i = 1
    while i < len(argv):
        arg = argv[i]
        if arg == "-m":
            return argv[i + 2:] if i + 1 < len(argv) and argv[i + 1] == "dramatiq" else None
        if arg == "-mdramatiq":
            return argv[i + 1:]
        if not arg.startswith("-") or arg == "-":
            return None  # a script, not a module
        i += 2 if arg in _PYTHON_OPTIONS_WITH_VALUE else 1
    return None


class _Rejected(Exception):
    pass


def _parse(args: list[str], cpu_count: int) -> argparse.Namespace:
    """Dramatiq's parser on `args`, with its CPU-count default replaced; never prints or exits."""
    from dramatiq.cli import make_argument_parser

    parser: Any = make_argument_parser()  # type: ignore[no-untyped-call]  # untyped in Dramatiq
    # Dramatiq's default is `multiprocessing.cpu_count()` taken when dramatiq.cli is imported; the
    # caller's count (os.cpu_count() on this host) replaces it so the parse stays a pure function.
    parser.set_defaults(processes=cpu_count)
    for action in parser._actions:
        if action.dest == "watch":
            action.type = None  # its check reads the filesystem relative to *our* cwd, not the worker's

    def error(message: str) -> NoReturn:
        raise _Rejected(message)

    def exit_(status: int = 0, message: str | None = None) -> NoReturn:
        # --help and --version print and exit: the worker would do the same instead of serving.
        raise _Rejected("it makes dramatiq print a message and exit instead of running workers")

    parser.error = error
    parser.exit = exit_
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        namespace: argparse.Namespace = parser.parse_args(args)
    return namespace


def worker_shape(command: str, cpu_count: int | None) -> WorkerShape:
    """Read a worker unit's shape from `DRAMATIQ_COMMAND`, exactly as Dramatiq will parse it.

    `cpu_count` is the host's CPU count (the caller passes `os.cpu_count()`; None counts as 1), which
    Dramatiq uses when `--processes` is absent. Raises `ConfigError` naming DRAMATIQ_COMMAND when
    Dramatiq's parser rejects the arguments, or when they give a worker no process or no thread.
    """
    try:
        argv = command_argv(command)
    except ValueError as exc:
        raise ConfigError("DRAMATIQ_COMMAND", command, f"expected a shell-like command line ({exc})") from None
    args = dramatiq_args(argv)
    if args is None:
        return WorkerShape(processes=1, threads=DRAMATIQ_DEFAULT_THREADS, queues=None,
                           shutdown_timeout_s=None, is_dramatiq=False)
    try:
        parsed: Any = _parse(args, max(1, cpu_count or 1))
    except _Rejected as exc:
        raise ConfigError("DRAMATIQ_COMMAND", command, f"Dramatiq's own parser rejects it: {exc}") from None
    if parsed.processes < 1 or parsed.threads < 1:
        raise ConfigError("DRAMATIQ_COMMAND", command, "expected --processes >= 1 and --threads >= 1")
    return WorkerShape(processes=parsed.processes, threads=parsed.threads,
                       queues=tuple(parsed.queues) if parsed.queues else None,
                       shutdown_timeout_s=parsed.worker_shutdown_timeout / 1000, is_dramatiq=True)


def shutdown_warning(shape: WorkerShape, graceful_shutdown_timeout_s: float) -> str:
    """A warning when systemd would SIGKILL workers before Dramatiq's own timeout, else ""."""
    dramatiq_s = shape.shutdown_timeout_s
    if dramatiq_s is None or graceful_shutdown_timeout_s >= dramatiq_s:
        return ""
    return (
        f"GRACEFUL_SHUTDOWN_TIMEOUT={graceful_shutdown_timeout_s:g}s is shorter than Dramatiq's "
        f"--worker-shutdown-timeout ({dramatiq_s:g}s): tasks still running after "
        f"{graceful_shutdown_timeout_s:g}s are SIGKILLed and their messages come back only through "
        "orphan recovery; add --worker-shutdown-timeout to DRAMATIQ_COMMAND or raise the timeout"
    )


def queues_warning(shape: WorkerShape, watched: tuple[str, ...]) -> str:
    """A warning when the workers' `--queues` and DRAMATIQ_QUEUE_NAME differ, else ""."""
    if shape.queues is None:
        return ""
    unserved = [q for q in watched if q not in shape.queues]
    unwatched = [q for q in shape.queues if q not in watched]
    if not unserved and not unwatched:
        return ""
    parts = []
    if unserved:
        parts.append(f"the agent scales on {','.join(unserved)}, which these workers never consume")
    if unwatched:
        parts.append(f"the workers also consume {','.join(unwatched)}, whose backlog the agent ignores")
    return (f"DRAMATIQ_QUEUE_NAME={','.join(watched)} does not match --queues {' '.join(shape.queues)} "
            f"of DRAMATIQ_COMMAND: {'; '.join(parts)}")


def startup_warnings(settings: Settings, cpu_count: int | None) -> list[str]:
    """Every warning about DRAMATIQ_COMMAND the agent logs once at start (none for a non-Dramatiq command).

    Raises `ConfigError` if Dramatiq's parser rejects the command.
    """
    shape = worker_shape(settings.dramatiq_command, cpu_count)
    found = (shutdown_warning(shape, settings.graceful_shutdown_timeout_s),
             queues_warning(shape, settings.queue_names))
    return [w for w in found if w]

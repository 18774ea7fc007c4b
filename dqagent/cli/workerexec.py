"""`dqagent worker-exec [INSTANCE]`: what `dramatiq-worker@.service` runs (`worker-exec %i`).

Finds the unit's pool from its instance name (`3`: the default pool, `io-3`: pool io; no instance: a
template from before pools, the default pool), reads that pool's DRAMATIQ_COMMAND and WORKER_DIRECTORY (the
default pool's from dqagent.env, another's from `pools.d/<pool>.env`), enters the directory and replaces
itself (exec) with the command: the unit's main PID is the command's own process.

Only the two keys a worker needs are validated: a bad value elsewhere is the agent's to reject (it keeps
running on its old settings, see dqagent.agent.reload), not a reason to fail every worker start.
Imported by the worker's start only: nothing here loads asyncio, Redis or Dramatiq.
"""

from __future__ import annotations

import os
import pwd
import sys
from pathlib import Path

from dqagent.core.units import WORKER_TEMPLATE, parse_worker
from dqagent.errors import EXIT_CONFIG, ConfigError
from dqagent.settings import pools, sources
from dqagent.settings.config import parse_worker_command
from dqagent.settings.parsers import DEFAULT_POOL
from dqagent.settings.workercmd import command_argv
from dqagent.setup.pooldropins import POOL_ENV


def worker_pool(instance: str | None) -> str:
    """The pool of a worker instance (`3`, `io-3`, or the unit's whole name); None: the default pool."""
    if instance is None:
        return DEFAULT_POOL
    unit = instance if instance.startswith(f"{WORKER_TEMPLATE}@") else f"{WORKER_TEMPLATE}@{instance}.service"
    parsed = parse_worker(unit)
    if parsed is None:
        raise ConfigError("worker-exec instance", instance, "expected N or <pool>-N of a unit dqagent manages "
                          "(dramatiq-worker@N, dramatiq-worker@<pool>-N; N in 1..1000)")
    return parsed[0]


def pool_command(pool: str, env_file: Path | None, environ: dict[str, str] | None = None) -> tuple[str, str]:
    """(DRAMATIQ_COMMAND, WORKER_DIRECTORY) of `pool`. Raises `ConfigError` (one line, exit 78): no pool file
    declares the pool (it names the pool), or a bad value (it names the file and the key), or a unit of a pool
    that runs without its drop-in (a pool added without `dqagent install`) as another user than the pool's
    WORKER_USER; as that user it runs, with a warning (no pool limits until `dqagent install`)."""
    environ = dict(os.environ) if environ is None else environ
    values, path = sources.read_values(env_file, environ=environ, command="worker-exec")
    where = str(path) if path is not None else "the settings"
    if pool != DEFAULT_POOL:
        files = pools.read(pools.pools_dir(path), only=pool)  # another pool's bad file is not this pool's
        values = pools.values_for(pool, values, files)  # ConfigError naming the pool when it has no file
        where = str(files[pool][0])
        if environ.get(POOL_ENV) != pool:
            _without_dropin(pool, values.get("WORKER_USER", "").strip(), where)
    try:
        return parse_worker_command(values)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc.key}", exc.value, exc.accepted) from None


def _without_dropin(pool: str, user: str, where: str) -> None:
    try:
        same = pwd.getpwnam(user).pw_uid == os.getuid()
    except KeyError:
        same = False
    line = f"this unit of pool {pool} has no drop-in of dqagent install (User=, Slice=, limits of {where})"
    if not same:
        raise ConfigError("pool", pool, f"{line} and runs as uid {os.getuid()}, not WORKER_USER={user}: refused; "
                          "fix: dqagent install")
    print(f"dqagent: warning: {line}: it runs without the pool's limits; fix: dqagent install", file=sys.stderr)


def worker_exec(env_file: Path | None, instance: str | None) -> int:
    """Exec the pool's command in its directory; returns only on failure (78: settings, 127: not runnable)."""
    pool = worker_pool(instance)
    command, directory = pool_command(pool, env_file)
    of = "" if pool == DEFAULT_POOL else f" of pool {pool}"
    argv = command_argv(command)
    try:
        os.chdir(directory)
    except OSError as exc:
        print(f"dqagent: cannot enter WORKER_DIRECTORY={directory}{of}: {exc.strerror}", file=sys.stderr)
        return EXIT_CONFIG
    sys.stdout.flush()
    try:
        os.execvp(argv[0], argv)
    except OSError as exc:
        print(f"dqagent: cannot run DRAMATIQ_COMMAND{of} ({argv[0]}): {exc.strerror}", file=sys.stderr)
        return 127
    raise AssertionError("unreachable")

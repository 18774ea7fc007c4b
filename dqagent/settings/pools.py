"""Worker pools: the default pool of `dqagent.env`, and one more per `pools.d/<name>.env` (pure but for `read`).

A pool file sets only `POOL_KEYS`: the keys that describe one kind of worker (its queues, command, user,
directory, range, policy, limits, priority). A key it leaves out takes the documented default, not the
value in dqagent.env: each pool file reads on its own. Everything else (Redis, metrics, the guard, fleet
identity, HOST_MAX_PROCESSES) is host-wide and comes from dqagent.env; a pool file that sets it is
refused, as is a key no setting declares (in dqagent.env that is only a warning, as before pools).

Each pool's `Settings` is a whole `Settings` (dqagent.env's host-wide values with the pool's own), so
every rule that takes a `Settings` (the step, the job table, `scale-up`) works on one pool unchanged.

A queue belongs to one pool: a queue named by two pools is refused, since splitting one queue's demand
between two kinds of worker has no answer an operator could predict (Dramatiq's consumers of one queue
race for its messages whatever their count).
"""

from __future__ import annotations

import io
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from dotenv import dotenv_values

from dqagent.errors import ConfigError
from dqagent.settings.config import Settings, parse_settings
from dqagent.settings.declarations import BY_KEY, DEFAULTS
from dqagent.settings.parsers import DEFAULT_POOL, POOL_NAME_PATTERN

#: The keys a pool file may set: what differs between kinds of worker on one host.
POOL_KEYS: frozenset[str] = frozenset({
    "DRAMATIQ_QUEUE_NAME", "DRAMATIQ_COMMAND", "WORKER_USER", "WORKER_DIRECTORY", "ALLOW_ROOT_WORKERS",
    "MIN_PROCESSES", "MAX_PROCESSES", "CHECK_INTERVAL", "DEMAND_POLL_INTERVAL", "SCALE_UP_THRESHOLD_MULTIPLIER",
    "SCALE_DOWN_THRESHOLD_MULTIPLIER",
    "GRACEFUL_SHUTDOWN_TIMEOUT", "PROCESS_STARTUP_DELAY", "QUEUE_METRIC", "SCALING_POLICY", "TARGET_PER_WORKER",
    "TARGET_TOLERANCE", "SCALE_UP_MAX_STEP", "SCALE_DOWN_WINDOW", "MAX_QUEUE_AGE", "WORKER_MEMORY_MAX",
    "WORKER_MEMORY_HIGH", "POOL_MEMORY_MAX", "POOL_CPU_QUOTA", "POOL_TASKS_MAX", "POOL_PRIORITY",
    "SCHEDULE", "SCHEDULE_TIMEZONE", "BROKER_FAILURE", "BROKER_FAILURE_COUNT", "BROKER_FAILURE_GRACE",
    "PREDICTIVE",
})
#: Where pool files live, beside the settings file (`/etc/dqagent/pools.d`).
POOLS_DIRNAME = "pools.d"
_NAME_RE = re.compile(POOL_NAME_PATTERN)


@dataclass(frozen=True, slots=True)
class Pool:
    """One pool: its name, its whole settings, and the file it came from (None: the default pool)."""

    name: str
    settings: Settings
    path: Path | None = None

    @property
    def source(self) -> str:
        return str(self.path) if self.path is not None else "dqagent.env"


def pools_dir(env_file: Path | None) -> Path | None:
    """The pool directory of a settings file (`/etc/dqagent/pools.d`), or None when no file was read."""
    return env_file.parent / POOLS_DIRNAME if env_file is not None else None


def read(directory: Path | None, only: str | None = None) -> dict[str, tuple[Path, dict[str, str]]]:
    """Each `<name>.env` of `directory` (sorted by name): its path and raw values. A missing directory is no
    pool; other files are ignored (editors' backups, `.dpkg-old`). `only`: that pool's file alone (what
    `dqagent worker-exec` needs: another pool's bad file must not stop this pool's workers). Raises
    `ConfigError` naming an unreadable file."""
    if directory is None or not directory.is_dir():
        return {}
    out: dict[str, tuple[Path, dict[str, str]]] = {}
    try:
        paths = ([directory / f"{only}.env"] if only is not None and (directory / f"{only}.env").exists()
                 else [] if only is not None else sorted(p for p in directory.iterdir() if p.name.endswith(".env")))
    except OSError as exc:
        raise ConfigError("pools", str(directory), f"cannot list it: {exc.strerror}") from None
    for path in paths:
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            why = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
            raise ConfigError(f"{path}", "", f"cannot read this pool file: {why}") from None
        out[path.name[:-len(".env")]] = (path, {k: (v or "") for k, v in
                                               dotenv_values(stream=io.StringIO(text)).items()})
    return out


def parse_pools(default: Settings, host_values: Mapping[str, str],
                files: Mapping[str, tuple[Path, Mapping[str, str]]]) -> tuple[Pool, ...]:
    """The default pool (`default`, from dqagent.env) and one pool per file, checked together.

    `host_values` are dqagent.env's merged raw values (its host-wide keys apply to every pool). Raises
    `ConfigError` naming the file and the key: a bad pool name, a key a pool file may not set, a bad value,
    a queue two pools name, MIN_PROCESSES together above HOST_MAX_PROCESSES. With FLEET, each pool
    is its own fleet (`fleet_of`).
    """
    pools = [Pool(DEFAULT_POOL, default)]
    shared = host_wide(host_values)
    for name, (path, values) in sorted(files.items()):
        if name == DEFAULT_POOL or not _NAME_RE.fullmatch(name):
            raise ConfigError(f"{path}: pool name", name, f"expected {POOL_NAME_PATTERN} (lower-case letters, digits, "
                              "_; not 'default', the pool of dqagent.env): rename the file")
        for key in values:
            if key not in BY_KEY:
                raise ConfigError(f"{path}: {key}", values[key], "unknown setting (the README lists them)")
            if key not in POOL_KEYS:
                raise ConfigError(f"{path}: {key}", values[key], "a host-wide setting: set it in dqagent.env "
                                  f"(a pool file sets only {', '.join(sorted(POOL_KEYS))})")
        if "DRAMATIQ_QUEUE_NAME" not in values:
            raise ConfigError(f"{path}: DRAMATIQ_QUEUE_NAME", "", "a pool file must name its queue(s)")
        try:
            settings = parse_settings({**shared, **values})
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc.key}", exc.value, exc.accepted) from None
        if settings.fleet:  # each pool is its own fleet: its hosts share its global target
            settings = replace(settings, fleet=fleet_of(settings.fleet, name))
        pools.append(Pool(name, settings, path))
    _check_together(pools)
    return tuple(pools)


def host_wide(values: Mapping[str, str]) -> dict[str, str]:
    """dqagent.env's values that every pool shares (all but `POOL_KEYS`)."""
    return {k: v for k, v in values.items() if k not in POOL_KEYS}


def probe_settings(settings: Settings, pools: Sequence[Pool]) -> Settings:
    """The host's settings with every pool's queues, in pool order: the one demand probe reads them all."""
    queues = tuple(q for p in pools for q in p.settings.queue_names)
    return replace(settings, queue_names=queues) if queues else settings


def fleet_of(fleet: str, pool: str) -> str:
    """A pool's fleet: `FLEET/<pool>` (`/` is in neither a fleet's name nor a host id, so no pool's records can
    be taken for another fleet's); the default pool's is FLEET itself."""
    return fleet if pool == DEFAULT_POOL else f"{fleet}/{pool}"


def _check_together(pools: Sequence[Pool]) -> None:
    owner: dict[str, Pool] = {}
    for pool in pools:
        for queue in pool.settings.queue_names:
            if queue in owner:
                raise ConfigError(f"{pool.source}: DRAMATIQ_QUEUE_NAME", queue,
                                  f"queue already served by pool {owner[queue].name!r} ({owner[queue].source}): "
                                  "a queue belongs to one pool")
            owner[queue] = pool
    default = pools[0].settings
    cap = default.host_max_processes
    floor = sum(p.settings.min_processes for p in pools)
    if cap is not None and floor > cap:
        raise ConfigError("HOST_MAX_PROCESSES", str(cap), f"expected an integer >= {floor}, the pools' "
                          "MIN_PROCESSES together (or empty: no host cap)")


def values_for(name: str, host_values: Mapping[str, str], files: Mapping[str, tuple[Path, Mapping[str, str]]]
               ) -> dict[str, str]:
    """The raw values `dqagent worker-exec` reads for a unit of pool `name`: dqagent.env's for the default
    pool, the pool file's (over the defaults) for another. Raises `ConfigError` for a pool with no file."""
    if name == DEFAULT_POOL:
        return dict(host_values)
    if name not in files:
        raise ConfigError("pool", name, "no pool file declares it (expected pools.d/<pool>.env beside dqagent.env)")
    shared = host_wide(host_values)
    return {**DEFAULTS, **shared, **files[name][1]}

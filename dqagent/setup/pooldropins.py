"""The systemd side of a pool (`/etc/dqagent/pools.d/<pool>.env`): what `dqagent install` renders so that the
units `dramatiq-worker@<pool>-N.service` run as the pool's user, in its directory, with its limits.

Why per-instance drop-ins. systemd 252 looks for drop-ins of `dramatiq-worker@io-3.service` in
`dramatiq-worker@io-3.service.d/`, `dramatiq-worker@.service.d/` and the dash prefixes of the part before
the `@` only (`dramatiq-.service.d/`): a directory `dramatiq-worker@io-.service.d/` is never read (tried in
the bench; see docs/operations.md, "Resource limits"). `Slice=`, `User=` and `WorkingDirectory=` have no
specifier for a part of the instance either. So each pool gets one drop-in per instance number the agent
may use (1..MAX_INSTANCE: a new worker can take a number above MAX_PROCESSES while older ones still stop),
all with the same text; 10 pools of 1000 directories cost systemd ~25 ms per daemon-reload.

Each pool's workers are placed in `system-dramatiq\\x2dworker-<pool>.slice`, a child of the slice every
template instance lands in (a dash in a slice name nests it), whose own drop-in carries the pool's
POOL_MEMORY_MAX/POOL_CPU_QUOTA/POOL_TASKS_MAX; dqagent.env's POOL_* stay on the parent, so they bound every
worker of every pool together.

Every file starts with `POOL_MARK`: install replaces or removes only files that carry it. Pure but for
`installed()`, which lists what is on disk.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from dqagent.core.units import MAX_INSTANCE, POOL_DROPIN, WORKER_TEMPLATE, pool_dropin
from dqagent.errors import ConfigError
from dqagent.settings.config import PATH_ACCEPTED, RENDERED_CHARS
from dqagent.settings.pools import Pool

#: Set by a pool's drop-in: `dqagent worker-exec` compares it with the pool its instance name says.
POOL_ENV = "DQAGENT_POOL"
#: POOL_DROPIN (`dqagent.core.units`) sorts after the template's `50-dqagent-limits.conf`, so a pool's
#: MemoryMax/MemoryHigh replace the default pool's for its units.
SLICE_DROPIN = "50-dqagent-limits.conf"
POOL_MARK = "# Installed by `dqagent install` from /etc/dqagent/pools.d; removed by it when the pool file goes."
_INSTANCE_DIR_RE = re.compile(rf"{WORKER_TEMPLATE}@([a-z][a-z0-9_]{{0,31}})-([1-9][0-9]{{0,2}}|1000)\.service\.d")
_SLICE_DIR_RE = re.compile(r"system-dramatiq\\x2dworker-([a-z][a-z0-9_]{0,31})\.slice\.d")
_LIMIT_RE = re.compile(r"[0-9]+|[0-9]+(\.[0-9]{1,2})?%|infinity")


def pool_slice(pool: str) -> str:
    """The slice of pool `pool`'s workers: a child of `system-dramatiq\\x2dworker.slice`."""
    return f"system-dramatiq\\x2dworker-{pool}.slice"


def instance_dropin(unit_dir: Path, pool: str, n: int) -> Path:
    return pool_dropin(pool, n, unit_dir)


def slice_dropin(unit_dir: Path, pool: str) -> Path:
    return unit_dir / f"{pool_slice(pool)}.d" / SLICE_DROPIN


def _seconds(value: float) -> str:
    return f"{value:.3f}".rstrip("0").rstrip(".") + "s"


def _checked(key: str, value: str, pattern: re.Pattern[str], accepted: str) -> str:
    if not pattern.fullmatch(value):
        raise ConfigError(key, value, f"expected {accepted}")
    return value


def worker_dropin(pool: Pool, protect_home: str = "", binds: tuple[str, ...] = ()) -> str:
    """The text of every `dramatiq-worker@<pool>-N.service.d/60-dqagent-pool.conf` of `pool`; with `binds`
    (the pool's command or directory under a home, `dqagent.setup.reach.preflight`) also its `ProtectHome=` and
    `BindReadOnlyPaths=`, as the template gets them for the default pool.

    Raises `ConfigError` naming the pool file and the key for a value a unit file cannot carry as is."""
    s, where = pool.settings, pool.source
    user = _checked(f"{where}: WORKER_USER", s.worker_user, RENDERED_CHARS, PATH_ACCEPTED)
    workdir = _checked(f"{where}: WORKER_DIRECTORY", s.worker_directory, RENDERED_CHARS, PATH_ACCEPTED)
    memory = [(k, _checked(f"{where}: {setting}", v, _LIMIT_RE, "bytes, N% or infinity") if v else "infinity")
              for setting, k, v in (("WORKER_MEMORY_MAX", "MemoryMax", s.worker_memory_max),
                                    ("WORKER_MEMORY_HIGH", "MemoryHigh", s.worker_memory_high))]
    lines = [f"Environment={POOL_ENV}={pool.name}", f"User={user}", f"WorkingDirectory=-{workdir}",
             f"TimeoutStopSec={_seconds(s.graceful_shutdown_timeout_s)}", f"Slice={pool_slice(pool.name)}",
             "MemoryAccounting=yes", *(f"{k}={v}" for k, v in memory)]
    if binds:
        lines += [f"ProtectHome={protect_home}", *(f"BindReadOnlyPaths={b}" for b in binds)]
    return (f"{POOL_MARK}\n# Pool {pool.name} ({where}): WORKER_USER, WORKER_DIRECTORY, GRACEFUL_SHUTDOWN_TIMEOUT, "
            "WORKER_MEMORY_MAX/HIGH (empty: infinity).\n[Service]\n" + "".join(f"{line}\n" for line in lines))


def slice_text(pool: Pool) -> str:
    """The pool slice's drop-in: POOL_MEMORY_MAX, POOL_CPU_QUOTA, POOL_TASKS_MAX of the pool file."""
    s, where = pool.settings, pool.source
    limits = [(k, _checked(f"{where}: {setting}", v, _LIMIT_RE, "bytes, N% or infinity"))
              for setting, k, v in (("POOL_MEMORY_MAX", "MemoryMax", s.pool_memory_max),
                                    ("POOL_CPU_QUOTA", "CPUQuota", s.pool_cpu_quota),
                                    ("POOL_TASKS_MAX", "TasksMax", s.pool_tasks_max)) if v]
    return (f"{POOL_MARK}\n# Pool {pool.name} ({where}): every dramatiq-worker@{pool.name}-N together: "
            "POOL_MEMORY_MAX, POOL_CPU_QUOTA, POOL_TASKS_MAX.\n[Slice]\n" + "".join(f"{k}={v}\n" for k, v in limits))


def rendered(unit_dir: Path, pools: Sequence[Pool],
             sandboxes: Mapping[str, tuple[str, tuple[str, ...]]] | None = None) -> dict[Path, str]:
    """Every pool file's drop-ins (the default pool's are the template's own: none here); `sandboxes`: each
    pool's (ProtectHome=, BindReadOnlyPaths=) when it needs binds.

    Raises `ConfigError` naming the pool file and key for a value a unit file cannot carry."""
    out: dict[Path, str] = {}
    for pool in pools:
        if pool.path is None:
            continue
        text = worker_dropin(pool, *(sandboxes or {}).get(pool.name, ("", ())))
        for n in range(1, MAX_INSTANCE + 1):
            out[instance_dropin(unit_dir, pool.name, n)] = text
        out[slice_dropin(unit_dir, pool.name)] = slice_text(pool)
    return out


def carries(path: Path, mark: str) -> bool:
    """Whether the first line of `path` is `mark` (how install knows the files it wrote)."""
    try:
        with path.open() as f:
            return f.readline().rstrip("\n") == mark
    except OSError:
        return False


def pool_of(path: Path) -> str | None:
    """The pool a pool drop-in path belongs to (by its directory's name), or None."""
    found = _INSTANCE_DIR_RE.fullmatch(path.parent.name) or _SLICE_DIR_RE.fullmatch(path.parent.name)
    return found.group(1) if found else None


def ours(path: Path) -> bool:
    """Whether `path` is a pool drop-in `dqagent install` wrote (its first line is POOL_MARK)."""
    return carries(path, POOL_MARK)


def installed(unit_dir: Path) -> list[Path]:
    """Every pool drop-in of ours in `unit_dir`, of any pool (to remove those no pool file wants any more)."""
    try:
        names = [p.name for p in unit_dir.iterdir()]
    except OSError:
        return []
    found = [unit_dir / d / POOL_DROPIN for d in names if _INSTANCE_DIR_RE.fullmatch(d)]
    found += [unit_dir / d / SLICE_DROPIN for d in names if _SLICE_DIR_RE.fullmatch(d)]
    return sorted(p for p in found if ours(p))


def stale(unit_dir: Path, wanted: Iterable[Path]) -> list[Path]:
    """Our pool drop-ins no pool file wants now (their pool file is gone)."""
    keep = set(wanted)
    return [p for p in installed(unit_dir) if p not in keep]

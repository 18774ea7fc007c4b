"""`dqagent install`'s part for the pools of `/etc/dqagent/pools.d` (see `dqagent.setup.pooldropins`).

Before anything is written: each pool's WORKER_USER exists (and is not root unless the pool allows it) and
every path its workers need is reachable in their sandbox (`reach.preflight` on the pool's settings), each
refusal one line naming the pool file. Then: each pool's WORKER_DIRECTORY is created for its user when
missing, its drop-ins written (one summary line a pool, not one a file), and the drop-ins of pools whose
files are gone removed (only files carrying `POOL_MARK`).
"""

from __future__ import annotations

import pwd
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from dqagent.core.units import POOL_DROPIN
from dqagent.settings import sources
from dqagent.settings.config import DEFAULTS, Settings
from dqagent.settings.pools import Pool
from dqagent.setup import pooldropins
from dqagent.setup.files import Report, make_worker_directory, remove_dropin, write
from dqagent.setup.reach import preflight

DEFAULT_WORKER_USER = DEFAULTS["WORKER_USER"]


def load(env_file: Path | None) -> tuple[Pool, ...]:
    """The pools of pools.d beside the settings file install reads (not the default pool)."""
    return sources.load(env_file, command="install").pools[1:]


def user_refusal(settings: Settings) -> str:
    """Why WORKER_USER cannot run workers (missing, or root without ALLOW_ROOT_WORKERS), or ""."""
    if settings.worker_user == DEFAULT_WORKER_USER:
        return ""
    try:
        worker_uid = pwd.getpwnam(settings.worker_user).pw_uid
    except KeyError:
        return (f"WORKER_USER={settings.worker_user} does not exist; fix: create it first (e.g. useradd --system "
                f"{settings.worker_user}) or use the default {DEFAULT_WORKER_USER}, which install creates")
    if worker_uid == 0 and not settings.allow_root_workers:  # another name for uid 0
        return (f"WORKER_USER={settings.worker_user} is uid 0: workers as root are refused; fix: use a dedicated "
                "user, or set ALLOW_ROOT_WORKERS=yes")
    return ""


@dataclass(frozen=True, slots=True)
class Planned:
    """What install will write for the pools, or why it must not."""

    files: dict[Path, str]
    refusals: tuple[str, ...]
    warnings: tuple[str, ...]


def plan(pools: Sequence[Pool], unit_dir: Path, exe: str, agent_text: str, worker_text: str) -> Planned:
    """Every pool's drop-ins and the lines that refuse the install (or only warn: a path missing yet).

    Raises `ConfigError` naming the pool file and key for a value a unit file cannot carry."""
    refusals: list[str] = []
    warnings: list[str] = []
    sandboxes: dict[str, tuple[str, tuple[str, ...]]] = {}
    for pool in pools:
        user = user_refusal(pool.settings)
        if user:
            refusals.append(f"pool {pool.name} ({pool.source}): {user}")
            continue
        pre = preflight(pool.settings, exe, agent_text, worker_text)
        refusals += [f"pool {pool.name} ({pool.source}): {r.line()}" for r in pre.refusals]
        workdir = Path(pool.settings.worker_directory)
        warnings += [f"pool {pool.name} ({pool.source}): {r.line()} (dqagent check fails until it is fixed)"
                     for r in pre.missing if not workdir.is_relative_to(r.path)]
        if pre.worker.binds:
            sandboxes[pool.name] = (pre.worker.protect_home, pre.worker.binds)
    files = pooldropins.rendered(unit_dir, pools, sandboxes)
    foreign = next((p for p in files if p.exists() and not pooldropins.ours(p)), None)
    if foreign is not None:  # an operator's file under our name: never ours to overwrite or remove
        refusals.append(f"{foreign} exists but was not written by dqagent install; fix: move it away (or rename it) "
                        "and run dqagent install again")
    return Planned(files, tuple(refusals), tuple(warnings))


def write_all(pools: Sequence[Pool], planned: Planned, unit_dir: Path, report: Report) -> str:
    """Create each pool's WORKER_DIRECTORY, write its drop-ins, remove those of pools gone; "" or why it stopped."""
    for pool in pools:
        worker = pwd.getpwnam(pool.settings.worker_user)
        workdir = Path(pool.settings.worker_directory)
        try:
            if make_worker_directory(workdir, worker.pw_uid, worker.pw_gid):
                report.changed.append(f"created {workdir} (pool {pool.name})")
        except OSError as exc:
            return (f"pool {pool.name}: cannot create WORKER_DIRECTORY {workdir} ({exc}); fix: create it yourself, "
                    f"owned by {pool.settings.worker_user}, and run dqagent install again")
    for pool in pools:
        mine = {p: t for p, t in planned.files.items() if pooldropins.pool_of(p) == pool.name}
        written = sum(write(path, text, 0o644, Report([], report.kept)) for path, text in mine.items())
        if written:
            report.changed.append(f"wrote {written} drop-ins of pool {pool.name} ({pool.source}): "
                                  f"dramatiq-worker@{pool.name}-1..N.service.d/{POOL_DROPIN}, "
                                  f"{pooldropins.pool_slice(pool.name)}")
    gone = remove_stale(unit_dir, planned.files)
    if gone:
        report.changed.append(f"removed {gone} drop-ins of pools no file in pools.d declares any more")
    return ""


def remove_stale(unit_dir: Path, wanted: Sequence[Path] | dict[Path, str]) -> int:
    """Remove our pool drop-ins not in `wanted` (and their directories when empty); how many."""
    stale = pooldropins.stale(unit_dir, wanted)
    for path in stale:
        remove_dropin(path)
    return len(stale)


def default_user_needed(settings: Settings, pools: Sequence[Pool]) -> bool:
    """Whether install creates the default worker user: a pool (the default one included) runs as it."""
    return any(s.worker_user == DEFAULT_WORKER_USER for s in (settings, *(p.settings for p in pools)))

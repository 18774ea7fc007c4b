"""The agent's pools: each pool's settings, policy, memory and jobs, and how one read of the broker and one
listing of systemd are split between them.

The default pool (dqagent.env) is always there and comes first; the others come from `pools.d/`
(`dqagent.settings.pools`). Each pool has its own job table (its instance numbers name its own units), its
own policy and the memory its last check left; the loop (`dqagent.agent.loop`) reads once for all pools and
decides for all of them in one host step (`dqagent.core.hoststep`).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace

from dqagent.core.demand import Demand, QueueDemand
from dqagent.core.policies import Policy, make_policy
from dqagent.core.snapshot import WorkerCounts
from dqagent.core.step import Memory
from dqagent.report.reporter import Reporter
from dqagent.settings.config import Settings
from dqagent.settings.pools import Pool
from dqagent.settings.workercmd import worker_shape
from dqagent.systemd.jobtable import JobTable, UnitManager


@dataclass(slots=True)
class PoolRun:
    """One pool as the agent runs it (mutable: the loop replaces `memory` each check, a reload `s`/`policy`)."""

    name: str
    s: Settings
    policy: Policy
    memory: Memory
    jobs: JobTable
    #: Monotonic seconds of its next check (-inf: at the next tick, e.g. after a reload).
    due_s: float = -math.inf
    #: Its part of STATUS= as of its last check.
    status: str = ""
    #: The count its last plan wanted (`Plan.wanted`), for the snapshot.
    last_wanted: int = 0
    #: Its figures as of the last check, for the snapshot (`dqagent.core.snapshot.PoolFigures`).
    workers: WorkerCounts | None = None
    queues: tuple[QueueDemand, ...] = ()
    #: Its share of HOST_MAX_PROCESSES at its last check; None: no host budget.
    share: int | None = None

    @property
    def priority(self) -> int:
        return self.s.pool_priority


def policy_for(s: Settings) -> Policy:
    """The pool's policy, from its settings (its command's shape: raises `ConfigError` for a bad command)."""
    return make_policy(s, s.scaling_policy, shape=worker_shape(s.dramatiq_command, os.cpu_count()))


def new_run(name: str, s: Settings, policy: Policy, units: UnitManager, reporter: Reporter,
            clock: Callable[[], float]) -> PoolRun:
    return PoolRun(name, s, policy, Memory(policy.initial_state()), JobTable(units, reporter, clock, pool=name))


def policies(pools: Iterable[Pool]) -> dict[str, Policy]:
    """Each pool's policy by name; raises `ConfigError` naming the pool's file for a command Dramatiq rejects."""
    from dqagent.errors import ConfigError

    out: dict[str, Policy] = {}
    for pool in pools:
        try:
            out[pool.name] = policy_for(pool.settings)
        except ConfigError as exc:
            if pool.path is None:
                raise
            raise ConfigError(f"{pool.path}: {exc.key}", exc.value, exc.accepted) from None
    return out


def demand_of(demand: Demand, queue_names: Sequence[str]) -> Demand:
    """The part of one read that concerns one pool's queues (skews and rejections stay with the whole read)."""
    wanted = set(queue_names)
    return replace(demand, queues=tuple(q for q in demand.queues if q.queue in wanted), rejected=())


def all_queues(pools: Iterable[Pool | PoolRun]) -> tuple[str, ...]:
    """Every pool's queues, in pool order: what the one demand probe reads."""
    return tuple(q for p in pools for q in (p.settings if isinstance(p, Pool) else p.s).queue_names)


def probe_settings(settings: Settings, pools: Iterable[Pool | PoolRun]) -> Settings:
    """The host's settings with every pool's queues: the one demand probe reads them all."""
    queues = all_queues(pools)
    return replace(settings, queue_names=queues) if queues else settings

"""The agent's pools: each pool's settings, policy, memory and jobs, and how one read of the broker and one
listing of systemd are split between them.

The default pool (dqagent.env) is always there and comes first; the others come from `pools.d/`
(`dqagent.settings.pools`). Each pool has its own job table (its instance numbers name its own units), its
own policy and the memory its last check left; the loop (`dqagent.agent.loop`) reads once for all pools and
decides for all of them in one host step (`dqagent.core.hoststep`).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace

from dqagent.broker.fleetstore import FleetCoordinator
from dqagent.core.demand import Demand, QueueDemand
from dqagent.core.policies import Policy, make_policy
from dqagent.core.schedule import InForce, status_note
from dqagent.core.snapshot import WorkerCounts
from dqagent.core.step import Memory
from dqagent.core.units import UNIT_DIR, UnitState, pool_dropin
from dqagent.report.logs import event
from dqagent.report.reporter import Reporter
from dqagent.settings.config import Settings
from dqagent.settings.parsers import DEFAULT_POOL
from dqagent.settings.pools import Pool
from dqagent.settings.schedule import zone_for
from dqagent.settings.workercmd import worker_shape
from dqagent.systemd.jobtable import JobTable, UnitManager

log = logging.getLogger("dqagent.agent.loop")  # the loop's events, as before pools


@dataclass(slots=True)
class PoolRun:
    """One pool as the agent runs it (mutable: the loop replaces `memory` each check, a reload `s`/`policy`)."""

    name: str
    s: Settings
    policy: Policy
    memory: Memory
    jobs: JobTable
    #: Fleet mode: the pool's own fleet (FLEET for the default pool, FLEET/<pool> for another).
    fleet: FleetCoordinator
    #: Monotonic seconds of its next check (-inf: at the next tick, e.g. after a reload).
    due_s: float = -math.inf
    #: Its part of STATUS= as of its last check.
    status: str = ""
    #: The count its last plan wanted (`Plan.wanted`), for the snapshot.
    last_wanted: int = 0
    #: Its figures as of the last check, for the snapshot (`dqagent.core.snapshot.PoolFigures`).
    workers: WorkerCounts | None = None
    queues: tuple[QueueDemand, ...] = ()
    units: tuple[UnitState, ...] = ()
    #: Its share of HOST_MAX_PROCESSES at its last check; None: no host budget.
    share: int | None = None
    #: A reload removed its file: its workers stop, then it is forgotten (it no longer decides).
    retiring: bool = False
    #: SCHEDULE as of its last check (None: no schedule).
    schedule: InForce | None = None
    #: While the broker cannot be read: the BROKER_FAILURE choice that sets its count now ("hold" also in the
    #: grace period); "" otherwise (`dqagent.agent.outage`).
    outage: str = ""

    @property
    def priority(self) -> int:
        return self.s.pool_priority


def policy_for(s: Settings) -> Policy:
    """The pool's policy, from its settings (its command's shape: raises `ConfigError` for a bad command)."""
    return make_policy(s, s.scaling_policy, shape=worker_shape(s.dramatiq_command, os.cpu_count()))


def new_run(name: str, s: Settings, policy: Policy, units: UnitManager, reporter: Reporter,
            clock: Callable[[], float], fleet: FleetCoordinator | None = None) -> PoolRun:
    return PoolRun(name, s, policy, Memory(policy.initial_state()), JobTable(units, reporter, clock, pool=name),
                   fleet if fleet is not None else FleetCoordinator())


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


class PoolHost:
    """The pools of this host as the loop (`dqagent.agent.loop.Loop`) runs them: every pool by name, the default
    pool first; `s`, `policy`, `memory`, `jobs` and `fleet` are the default pool's (dqagent.env's settings are
    also the host-wide ones)."""

    def __init__(self, settings: Settings, policy: Policy, units: UnitManager, reporter: Reporter,
                 clock: Callable[[], float], fleet: FleetCoordinator | None, pools: Sequence[Pool],
                 pool_policies: Mapping[str, Policy] | None) -> None:
        self.units = units
        self.reporter = reporter
        self.clock = clock
        #: Where `dqagent install` wrote the pools' drop-ins (tests point it elsewhere).
        self.unit_dir = UNIT_DIR
        #: Every pool by name, the default pool first.
        self.runs: dict[str, PoolRun] = {DEFAULT_POOL: new_run(DEFAULT_POOL, settings, policy, units, reporter,
                                                               clock, fleet)}
        self.add_pools(pools, pool_policies)
        #: Pools whose units systemd runs but no pool file declares (warned about once each).
        self._undeclared: set[str] = set()

    @property
    def default(self) -> PoolRun:
        return self.runs[DEFAULT_POOL]

    @property
    def s(self) -> Settings:
        """The default pool's settings, which are also the host-wide ones (dqagent.env)."""
        return self.default.s

    @s.setter
    def s(self, value: Settings) -> None:
        self.default.s = value

    @property
    def policy(self) -> Policy:
        return self.default.policy

    @policy.setter
    def policy(self, value: Policy) -> None:
        self.default.policy = value

    @property
    def memory(self) -> Memory:
        """What the default pool's last check handed the next (`dqagent.core.step.Memory`)."""
        return self.default.memory

    @memory.setter
    def memory(self, value: Memory) -> None:
        self.default.memory = value

    @property
    def fleet(self) -> FleetCoordinator:
        """The default pool's fleet mode (`dqagent.broker.fleetstore`): used while FLEET is set."""
        return self.default.fleet

    @fleet.setter
    def fleet(self, value: FleetCoordinator) -> None:
        self.default.fleet = value

    async def close_fleets(self) -> None:
        for run in self.runs.values():
            await run.fleet.close()

    @property
    def jobs(self) -> JobTable:
        """The default pool's jobs in flight."""
        return self.default.jobs

    def pool_list(self) -> tuple[Pool, ...]:
        """The pools as they run now (the default pool first). The status page calls it from the metrics
        server's thread: `runs` is copied in one C-level step before any Python code runs between items."""
        return tuple(Pool(name, run.s) for name, run in tuple(self.runs.items()))

    def add_pools(self, pools: Sequence[Pool], pool_policies: Mapping[str, Policy] | None = None) -> None:
        """Add the pools not yet run (the default pool is given to the constructor); warn about each whose
        drop-ins `dqagent install` has not written yet."""
        for pool in pools:
            if pool.name not in self.runs:
                if not pool_dropin(pool.name, 1, self.unit_dir).exists():
                    log.warning("pool %s: its user, directory and limits are not installed: run dqagent install "
                                "(until then its workers run as the template's user, without the pool's limits, "
                                "and refuse to start when WORKER_USER differs)", pool.name,
                                extra=event("pool_not_installed", dqagent_pool=pool.name))
                made = pool_policies[pool.name] if pool_policies is not None else policy_for(pool.settings)
                self.runs[pool.name] = new_run(pool.name, pool.settings, made, self.units, self.reporter, self.clock,
                                               self.fleet.sibling())

    def _of(self, run: PoolRun) -> str:
        """` of pool io` in a log line when the host has several pools; "" with one (the lines as before pools)."""
        return f" of pool {run.name}" if len(self.runs) > 1 else ""

    def _schedule_note(self, run: PoolRun, window: InForce | None) -> str:
        """A pool's SCHEDULE at its check: kept for the snapshot, each change of its windows logged
        (`schedule_changed`); returns its part of STATUS= ("" without a schedule)."""
        before, run.schedule = run.schedule, window
        if window is None:
            return ""
        zone = zone_for(run.s.schedule_timezone)
        note = status_note(window, zone)
        seen = (window.windows, window.warming, window.floor, window.ceiling)
        if before is None or seen != (before.windows, before.warming, before.floor, before.ceiling):
            log.info("%s%s", note, self._of(run),
                     extra=event("schedule_changed", dqagent_pool=run.name, windows=" + ".join(window.windows),
                                 warming=" + ".join(window.warming), floor=_or_empty(window.floor),
                                 ceiling=_or_empty(window.ceiling)))
        return note

    def _note_undeclared(self, states: Sequence[UnitState]) -> None:
        """Warn once per pool whose units run but which no pool file declares: the agent leaves them alone."""
        for pool in sorted({s.pool for s in states if s.occupied} - set(self.runs) - self._undeclared):
            self._undeclared.add(pool)
            log.warning("units of pool %s run, but no pool file declares it: left alone (stop them with "
                        "systemctl stop 'dramatiq-worker@%s-*', or add pools.d/%s.env)", pool, pool, pool,
                        extra=event("undeclared_pool", dqagent_pool=pool))



def _or_empty(n: int | None) -> str:
    return "" if n is None else str(n)

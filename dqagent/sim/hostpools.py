"""A simulated host with several worker pools sharing HOST_MAX_PROCESSES, decided by the agent's host step.

Each pool is the single-pool simulator's (`dqagent.sim.model.PoolRun`: its own queue and arrivals, its workers,
its policy, its [MIN, MAX]); the host adds one agent that reads every pool at once and decides them together
through `dqagent.core.hoststep.decide_host` (each pool's step, the host budget's shares and caps, the higher
priority first), the same call the agent's loop makes, then carries out every pool's plan. The agent reads all
pools at the shortest next read any pool's check asked for. The guard is off here (no host model is shared
between pools yet).

`./dev/pools` (`dqagent.sim.poolsbench`) prints the two-pool burst scenario's table (docs/scaling.md, "Pools").
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

from dqagent.core.hoststep import PoolInput, decide_host, is_due
from dqagent.core.policies import Policy
from dqagent.core.prediction import Mode
from dqagent.sim.agenttick import SimAgent, rules_for
from dqagent.sim.model import PoolRun, Result
from dqagent.sim.pool import TICK, Pool
from dqagent.sim.poolconfig import PoolConfig
from dqagent.sim.traces import Workload


@dataclass(frozen=True, slots=True)
class PoolSpec:
    """One simulated pool on the host: its name (also its queue's), work, policy, shape and range, priority."""

    name: str
    workload: Workload
    policy: Policy
    config: PoolConfig
    priority: int = 0
    #: PREDICTIVE for this pool.
    predictive: Mode = Mode.OFF


@dataclass(frozen=True, slots=True)
class HostSample:
    """The host after one check's actions: each pool's units holding an instance number (running, starting and
    still stopping), by name, in priority order."""

    t_s: float
    units: tuple[tuple[str, int], ...]

    @property
    def total(self) -> int:
        return sum(n for _, n in self.units)

    def of(self, pool: str) -> int:
        return dict(self.units)[pool]


@dataclass(frozen=True, slots=True)
class HostResult:
    """Every pool's `Result`, and the host's units at every check."""

    pools: Mapping[str, Result]
    samples: tuple[HostSample, ...]

    def max_units(self, pool: str | None = None) -> int:
        """The most units one pool (None: all pools together) held at once. Units are only added by a check,
        so the most after any check is the most at any time."""
        return max((s.total if pool is None else s.of(pool) for s in self.samples), default=0)


def simulate_host(pools: Sequence[PoolSpec], budget: int | None, tick_s: float = 5.0,
                  adaptive_reads: bool = False, horizon_s: float | None = None) -> HostResult:
    """Run every pool's workload on one host whose agent decides them together with `budget` as
    HOST_MAX_PROCESSES (None: no host cap). Each pool starts at its MIN, warm. Same seeds, same result."""
    runs: dict[str, PoolRun] = {}
    priority = {p.name: p.priority for p in pools}
    for p in pools:
        rules = replace(rules_for(p.config, p.policy, tick_s, adaptive_reads, guard=False), queue_names=(p.name,))
        agent = SimAgent(rules, Pool(p.workload, p.config, None), None, p.name, predictive=p.predictive)
        runs[p.name] = run = PoolRun(p.workload, p.config, None, agent, horizon_s, ())
        run.begin(p.config.min_workers, None)
    horizon = max(run.horizon for run in runs.values())
    samples: list[HostSample] = []
    next_read = 0.0
    due: dict[str, float] = {}
    while True:
        first: PoolRun | None = None
        at = (next_read, 1)
        for run in runs.values():  # the earliest event of any pool; on a tie with the read, the earlier pushed
            events = run.pool.events
            if events:
                head = (events[0][0], 0 if events[0][1] <= run.read_seq else 2)
                if head < at:
                    first, at = run, head
        if first is not None:
            now, _, kind, a, b = heapq.heappop(first.pool.events)
            first.on_event(kind, a, b, now)
            continue
        if next_read > horizon or all(run.done(next_read) for run in runs.values()):
            break
        next_read = _read(runs, priority, budget, next_read, samples, due)
    return HostResult({p.name: runs[p.name].finish(p.policy.name) for p in pools}, tuple(samples))


def _read(runs: Mapping[str, PoolRun], priority: Mapping[str, int], budget: int | None, now: float,
          samples: list[HostSample], due: dict[str, float]) -> float:
    """The agent's check, as `dqagent.agent.loop` runs it: observe every pool, decide the due ones together
    (`is_due`: each on its own schedule; the others claim their current size), act; returns the next check's
    time, the earliest pool's next read. `due` is each pool's next read, updated."""
    observed = {name: run.agent.observe(now) for name, run in runs.items()}
    due_now = {name: is_due(due.get(name, -math.inf), now, len(runs)) for name in runs}
    forecasts = {name: run.agent.forecast(observed[name], now) if due_now[name] else None
                 for name, run in runs.items()}
    checks = decide_host([PoolInput(name, run.agent.rules, observed[name], run.agent.memory, priority[name],
                                    due=due_now[name], forecast=forecasts[name])
                          for name, run in runs.items()], budget)
    assert isinstance(checks, dict), "the guard is off: the host step never asks for the host"
    for name, check in checks.items():
        run = runs[name]
        run.agent.memory = check.memory
        run.agent.learn(observed[name], now, forecasts[name])
        run.apply(observed[name], check, now)
        run.read_seq = run.pool.seq
        run.on_event(TICK, 0, 0, now)  # a read wakes the pool's sleepers as any event does
        due[name] = now + check.next_read_s
    samples.append(HostSample(now, tuple((name, _units(runs[name].pool, now)) for name in runs)))
    return min(due.values())


def _units(pool: Pool, now: float) -> int:
    """Units holding an instance number: every worker process (starting, running, draining), and the stopped
    ones whose process still exits."""
    return len(pool.workers) + sum(1 for gone_s in pool.exiting.values() if gone_s > now)

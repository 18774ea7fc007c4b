"""Discrete-event model of one Dramatiq worker pool under a scaling policy, driven by the agent's own check.

The pool's mechanics (workers, prefetch, start-up, draining stops, what work costs) are `dqagent.sim.pool`'s,
the `poll` dispatch `dqagent.sim.polling`'s. The decisions are the agent's: at each read the simulated agent
(`dqagent.sim.agenttick`) observes the pool as a real agent reads systemd and Redis, and calls the same
decision step (`dqagent.core.step.decide`: the policy, the delayed-message floor, the guard, the clamp, the
reconciler's starts and stops, the backoff, the next read); the simulator has no scaling rule of its own.
The real policy classes run unchanged through the `Policy` protocol. Same seed, same result.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from dqagent.core.policies import Policy
from dqagent.core.prediction import Mode
from dqagent.sim.agenttick import SimAgent, rules_for
from dqagent.sim.polling import SLEEP_EXACT_S, Polling
from dqagent.sim.pool import ARRIVE, CUT, DONE, FAIL, POLL, READY, TICK, Life, Pool, lookup
from dqagent.sim.poolconfig import DISPATCH_MODELS, POLL_EXACT, PoolConfig
from dqagent.sim.traces import Workload

if TYPE_CHECKING:
    from dqagent.core.forecast import Forecaster
    from dqagent.core.guard import Limits
    from dqagent.core.pause import Pause
    from dqagent.core.step import Check, Observed
    from dqagent.sim.host import HostModel

__all__ = ["DISPATCH_MODELS", "POLL_EXACT", "SLEEP_EXACT_S", "Life", "PoolConfig", "Result", "Sample", "lookup",
           "oracle_worker_seconds", "simulate"]


@dataclass(frozen=True, slots=True)
class Sample:
    """The pool at one policy tick, for plots."""

    t_s: float
    ready: int
    outstanding: int
    workers: int


@dataclass(frozen=True, slots=True)
class Result:
    """What one run produced; `metrics()` turns it into the table's figures."""

    policy: str
    waits_s: tuple[float, ...]
    completed: tuple[int, ...]
    worker_seconds: float
    scale_events: tuple[tuple[float, int], ...]
    samples: tuple[Sample, ...]
    burst_drain_s: tuple[float, ...]
    max_backlog: int
    end_s: float
    #: Every worker's life, in the order they ended (the still running ones last, ended at `end_s`).
    lives: tuple[Life, ...] = ()
    #: Tasks cut short at a stopped worker's shutdown timeout, run again (`PoolConfig.shutdown_timeout_s`).
    reruns: int = 0


def simulate(workload: Workload, policy: Policy, pool: PoolConfig, tick_s: float,
             initial_workers: int | None = None, horizon_s: float | None = None,
             host: HostModel | None = None, guard: Limits | None = None, adaptive_reads: bool = False,
             first_read_s: float = 0.0, read_times_s: Sequence[float] = (), pauses: Sequence[Pause] = (),
             predictive: Mode = Mode.OFF, forecaster: Forecaster | None = None) -> Result:
    """Run `workload` through a pool driven by `policy` under the agent's rules. Returns every message's wait
    and the cost.

    `host` (dqagent.sim.host): a host that slows every task down beyond its capacity; `guard`: the agent's
    guard with these limits caps each scale-up by that host's CPU pressure (both optional). `tick_s` is the
    read interval (CHECK_INTERVAL, or DEMAND_POLL_INTERVAL with `target`); with `adaptive_reads` it is the
    base of the agent's adaptive one (SCALING_POLICY=target). `first_read_s`: when the agent reads first (the
    phase of its reads against the workload's clock; a real agent's is whatever it happens to be).
    `read_times_s` (ascending): read exactly then instead (a real agent's measured reads, replayed), and at
    the intervals after the last one. `pauses`: operators' pauses or maintenance windows (`dqagent pause`), their
    times on the simulated wall clock (`dqagent.sim.agenttick.EPOCH_S` + simulated seconds). `predictive`:
    PREDICTIVE's mode (the agent's forecaster, learning from this run only); `forecaster`: another source for
    the same floor (`dqagent.sim.oracle.Oracle`, the workload's true future), with `predictive` not off.
    """
    if pool.dispatch not in (*DISPATCH_MODELS, POLL_EXACT):
        raise ValueError(f"dispatch: unknown {pool.dispatch!r}, expected one of {', '.join(DISPATCH_MODELS)}")
    run = PoolRun(workload, pool, host, SimAgent(rules_for(pool, policy, tick_s, adaptive_reads, guard is not None),
                                              Pool(workload, pool, host), guard, pauses=pauses,
                                              predictive=predictive, forecaster=forecaster), horizon_s,
                  read_times_s)
    return run.run(policy.name, initial_workers if initial_workers is not None else pool.min_workers, first_read_s)


class PoolRun:
    """One simulation: the event loop over the pool, its consumers' polls and the agent's reads."""

    def __init__(self, workload: Workload, cfg: PoolConfig, host: HostModel | None, agent: SimAgent,
                 horizon_s: float | None, read_times_s: Sequence[float]) -> None:
        self.workload = workload
        self.agent = agent
        self.pool = agent.pool
        self.host = host
        self.polling = Polling(self.pool, cfg.dispatch == "poll") if cfg.dispatch in ("poll", POLL_EXACT) else None
        self.sleepers = self.polling if self.polling is not None and self.polling.sleepers else None
        self.end_arrivals = workload.trace.duration_s
        self.horizon = horizon_s if horizon_s is not None else self.end_arrivals + 6 * 3600
        self.reads: Iterator[float] = iter(read_times_s)
        self.scale_events: list[tuple[float, int]] = []
        self.samples: list[Sample] = []
        self.max_backlog = 0
        #: When the caller reads (`begin` without a first read): the last event pushed before its next read was
        #: scheduled (a tie goes to the earlier pushed, as the TICK in `events` would).
        self.read_seq = 0

    def run(self, name: str, initial: int, first_read_s: float) -> Result:
        self.begin(initial, first_read_s)
        events, pop, on_event = self.pool.events, heapq.heappop, self.on_event  # (locals: the hot loop)
        while events:
            now, _, kind, a, b = pop(events)
            if kind == TICK and not self.tick(now):
                break
            on_event(kind, a, b, now)
        return self.finish(name)

    def begin(self, initial: int, first_read_s: float | None) -> None:
        """The arrivals, the agent's first read (None: the caller reads, `dqagent.sim.hostpools`), the warm pool."""
        pool = self.pool
        for i, t in enumerate(self.workload.arrivals_s):
            pool.push(t, ARRIVE, i)
        if first_read_s is not None:
            pool.push(next(self.reads, first_read_s), TICK)
        self.read_seq = pool.seq  # (the caller reads: the events pushed so far go before a read at the same time)
        pool.warm(initial)
        if self.polling is not None:
            for w in list(pool.workers.values()):
                pool.push(0.0, POLL, w.wid)

    def on_event(self, kind: int, a: int, b: int, now: float) -> None:
        """What one event does to the pool (a read, TICK, only wakes the sleepers: `tick` has done the rest)."""
        pool = self.pool
        if kind == ARRIVE:
            pool.queue.append(a)
            pool.dispatch(now)
        elif kind == READY:
            pool.on_ready(a, now)
        elif kind == FAIL:
            self.agent.failed(pool.on_fail(a, now))
        elif kind == POLL:
            assert self.polling is not None
            self.polling.on_poll(a, now)
        elif kind == DONE:
            pool.on_done(a, b, now)
        elif kind == CUT:
            pool.on_cut(a, now)
        sleepers = self.sleepers
        if sleepers is not None and pool.queue and sleepers.race_wid < 0:  # attend's first test, inlined (hot)
            sleepers.attend(now)

    def finish(self, name: str) -> Result:
        # Charge what still runs up to the end of the work (the trace, or the last completion), so policies
        # that tick rarely are not billed for the idle tail after it.
        self.pool.close(max(self.end_arrivals, self.pool.last_done))
        return self.result(name)

    def done(self, now: float) -> bool:
        """Past the horizon, or every message arrived and done."""
        pool = self.pool
        return now > self.horizon or (now >= self.end_arrivals and pool.done_count == len(self.workload)
                                      and not pool.queue)

    def tick(self, now: float) -> bool:
        """The agent's read: observe, decide (`dqagent.core.step`), act. False when the work is done."""
        if self.done(now):
            return False
        busy = self.pool.busy() if self.host is not None else 0
        observed, check = self.agent.check(now, self.host.cpu_pressure(busy) if self.host is not None else None)
        self.apply(observed, check, now)
        self.pool.push(next(self.reads, now + self.agent.next_read_s(now, check.next_read_s)), TICK)
        return True

    def apply(self, observed: Observed, check: Check, now: float) -> None:
        """Carry out a check's plan, and record it."""
        self.agent.act(check, now)
        plan, demand, pool = check.plan, observed.demand, self.pool
        if plan.start:
            self.scale_events.append((now, +1))
        if plan.stop:
            self.scale_events.append((now, -1))
        if plan.wanted < plan.pool:
            pool.dispatch(now)
        self.max_backlog = max(self.max_backlog, demand.outstanding)
        self.samples.append(Sample(now, demand.ready, demand.outstanding, plan.wanted))

    def result(self, name: str) -> Result:
        pool, workload = self.pool, self.workload
        arrivals, started_at = workload.arrivals_s, pool.started_at
        waits = tuple(started_at[i] - arrivals[i] for i in range(len(workload)) if not math.isnan(started_at[i]))
        drains = tuple(max(started_at[i] for i in members) - arrivals[members[0]]
                       for members in workload.burst_members if members)
        return Result(name, waits, tuple(pool.completions), pool.cost, tuple(self.scale_events),
                      tuple(self.samples), drains, self.max_backlog, max(self.end_arrivals, pool.last_done),
                      tuple(pool.lives), pool.reruns)


def oracle_worker_seconds(workload: Workload, pool: PoolConfig) -> float:
    """The oracle's cost: a clairvoyant pool where every message starts on arrival (zero wait), workers
    start instantly and tasks are packed perfectly, never below MIN.

    Integrates max(min_workers, ceil(busy_threads(t) / threads)) over the run: no zero-wait pool of
    whole workers can cost less.
    """
    points: list[tuple[float, int]] = []
    for a, s in zip(workload.arrivals_s, workload.services_s, strict=True):
        points += [(a, 1), (a + s, -1)]
    points.sort()
    busy, last, total = 0, 0.0, 0.0
    for t, delta in points:
        total += (t - last) * max(pool.min_workers, math.ceil(busy / pool.threads))
        busy += delta
        last = t
    end = max(last, workload.trace.duration_s)
    total += (end - last) * pool.min_workers
    return total

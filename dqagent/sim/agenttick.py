"""The agent's check on the simulated pool: what it observes, the shared decision step, and its actions.

The simulator has no scaling rule of its own: at each read it builds the `dqagent.core.step.Observed` a real agent
would read off systemd and Redis, calls `dqagent.core.step.decide` (with the host's headroom when the guard asks
for it), and carries out `check.plan` exactly, as `dqagent.agent.lifecycle.Agent.tick` and its job table do:

- each simulated worker is one unit: `activating` with a start job until its start job ends, then
  `active/running` from that instant (its ActiveEnterTimestamp); `deactivating` with a stop job while it
  drains and until its process has exited; a start that failed stays `failed` (no process, its number held)
  until a later start reuses its number;
- the agent's own jobs in flight: a start from its start job until its start check ends (start job +
  PROCESS_STARTUP_DELAY; a failed start until the unit ended), a stop until the process has exited;
- systemd's start limit (`dqagent.core.startlimit`: StartLimitBurst starts of one unit within
  StartLimitIntervalSec; every simulated unit stays loaded, the worst case): one more start fails at once with
  `start-limit-hit` (counted in `start_limit_hits`), until a reset of that number clears its count;
- RabbitMQ without its management API (`PoolConfig.in_flight_visible` False): the read sees the ready count and
  one consumer per worker past its start (not stopping), and in flight as `dqagent.core.rabbitdemand` estimates it;
- a broker outage (`PoolConfig.broker_outages_s`): no demand is read, `Observed.broker_down_since_s` is set and
  the step decides by BROKER_FAILURE;
- the starts of one check are judged together when the last check ends (a failed one backs off further
  starts, `dqagent.core.reconciler.Backoff`), and reusing a failed unit's number counts as a failure, as in
  `dqagent.systemd.jobtable`; a replayed real failure (`PoolConfig.failed_starts_s`) fails the first start near it.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Sequence
from functools import cache
from typing import TYPE_CHECKING

from dqagent.core import startlimit
from dqagent.core.busy import Load
from dqagent.core.demand import Demand, QueueDemand
from dqagent.core.guard import Headroom, Limits
from dqagent.core.pause import Pause
from dqagent.core.policies import Policy
from dqagent.core.prediction import Forecast, Mode
from dqagent.core.predictor import Predicting
from dqagent.core.rabbitdemand import QueueCounts, queue_demand
from dqagent.core.reconciler import Backoff, Intent
from dqagent.core.step import Check, Host, Memory, NeedsHost, Observed, Rules, decide
from dqagent.settings.config import QueueMetric
from dqagent.settings.parsers import DEFAULT_POOL
from dqagent.settings.schedule import zone_for
from dqagent.sim.pool import EPOCH_US, Pool, Worker, lookup
from dqagent.systemd.client import ActiveState, UnitState, worker_unit
from dqagent.systemd.jobtable import START_SAMPLES

if TYPE_CHECKING:
    from dqagent.core.forecast import Forecaster
    from dqagent.sim.poolconfig import PoolConfig

#: Simulated time 0 on the wall clock (seconds): a `Pause`'s since/until are this plus simulated seconds.
EPOCH_S = EPOCH_US / 1e6
#: The simulated queue's name (Dramatiq's default queue).
QUEUE = "default"


def rules_for(cfg: PoolConfig, policy: Policy, tick_s: float, adaptive_reads: bool, guard: bool) -> Rules:
    """The settings a real agent would decide this pool with (`Rules.from_settings` of the same values)."""
    return Rules(policy=policy, min_processes=cfg.min_workers, max_processes=cfg.max_workers,
                 queue_metric=QueueMetric(cfg.metric), adaptive_reads=adaptive_reads, read_every_s=tick_s,
                 check_interval_s=cfg.check_interval_s, startup_delay_s=cfg.check_s(), guard=guard,
                 queue_names=(QUEUE,), schedule=cfg.schedule,
                 zone=zone_for(cfg.schedule_timezone) if cfg.schedule else None, broker_failure=cfg.broker_failure)


class SimAgent:
    """The agent's memory between checks on one simulated pool: the step's `Memory`, the crash-loop backoff,
    the start batches not judged yet, and the failed units not reset yet."""

    def __init__(self, rules: Rules, pool: Pool, limits: Limits | None, name: str = DEFAULT_POOL,
                 pauses: Sequence[Pause] = (), predictive: Mode = Mode.OFF,
                 forecaster: Forecaster | None = None) -> None:
        self.rules = rules
        self.pool = pool
        #: The pool's name (its units' names: `dramatiq-worker@<name>-N`, the default pool's `@N`).
        self.name = name
        #: The guard's limits (None: the guard is off).
        self.limits = limits
        self.memory = Memory(rules.policy.initial_state())
        self.backoff = Backoff()
        self.failed_numbers: set[int] = set()
        self.failures_left = list(pool.cfg.failed_starts_s)
        #: Start batches not judged yet: (when the last check of the batch ends, batch); and whether one failed.
        self.judging: list[tuple[float, int]] = []
        self.batch_failed: dict[int, bool] = {}
        self.batches = 0
        #: The last few start jobs' durations: what the agent's job table measures (`JobTable.start_s`).
        self.start_took: deque[float] = deque(maxlen=START_SAMPLES)
        #: Operators' pauses (`dqagent pause`): each in force from its since_s to its until_s (wall clock, EPOCH_S).
        self.pauses = tuple(pauses)
        #: The agent's own starts of each number (its memory, `dqagent.core.startlimit`) and systemd's count.
        self.starts: startlimit.Starts = {}
        self.systemd_starts: startlimit.Starts = {}
        #: Starts systemd refused with start-limit-hit: (time, number).
        self.start_limit_hits: list[tuple[float, int]] = []
        #: PREDICTIVE: the forecaster the agent keeps (None: off), fed and asked at every check as the agent does;
        #: `forecaster` replaces the agent's own (`dqagent.sim.oracle`: the same floor fed a perfect forecast).
        self.predicting = Predicting(predictive, forecaster) if predictive is not Mode.OFF else None

    def observe(self, now: float) -> Observed:
        """What a real agent would read now: the queue's counts and the units, with its own jobs and backoff."""
        self.judge(now)
        pool = self.pool
        ready = len(pool.queue)
        held = sum(w.running + len(w.held) for w in pool.workers.values())
        # The list head's wait since its arrival (Dramatiq's message_timestamp, the first enqueue: a requeued
        # message keeps it and goes to the tail, as in `Pool.finish_drain`).
        oldest = now - pool.arrivals_s[pool.queue[0]] if pool.queue else None
        if pool.cfg.in_flight_visible:
            demand = Demand((QueueDemand(self.rules.queue_names[0], ready, ready + held, 0, 0, 0, oldest),))
        else:  # RabbitMQ without its management API: ready and consumers only, no age
            consumers = sum(1 for w in pool.workers.values() if w.ready and not w.stopping)
            demand = Demand((queue_demand(self.rules.queue_names[0], QueueCounts(ready, consumers), QueueCounts(),
                                          QueueCounts(), pool.cfg.prefetch),))
        units: list[UnitState] = []
        flight: dict[int, Intent] = {}
        name = self.name
        for w in pool.workers.values():
            units.append(_unit(w, now, flight, name))
        for n, gone_s in pool.exiting.items():
            if gone_s > now:  # its process still exits: the stop job has not ended
                units.append(UnitState(_name(n, name), n, ActiveState.DEACTIVATING, "stop-sigterm", 0, 0, 0,
                                       "success", True, "stop", pool=name))
                flight[n] = Intent.STOP
        for n in self.failed_numbers:
            units.append(UnitState(_name(n, name), n, ActiveState.FAILED, "failed", 0, 0, 0, "exit-code", False,
                                   pool=name))
        down = self.outage_start(now)
        if down is not None:  # the broker cannot be read: no demand (the step decides by BROKER_FAILURE)
            demand = Demand(())
        # The app's reports (`PoolConfig.reports`): what each ready worker runs and holds, as the agent reads it
        loads = {w.number: Load(w.running, len(w.held), 1, 0, now) for w in pool.workers.values()
                 if w.ready and not w.stopping} if pool.cfg.reports else {}
        return Observed(now, EPOCH_US + now * 1e6, demand, units, flight, self.backoff,
                        start_s=max(self.start_took, default=0.0), broker_down_since_s=down, starts=self.starts,
                        loads=loads)

    def outage_start(self, now: float) -> float | None:
        """The start of the broker outage under way at `now`, if any."""
        return next((a for a, b in self.pool.cfg.broker_outages_s if a <= now < b), None)

    def check(self, now: float, host_cpu: float | None) -> tuple[Observed, Check]:
        """Observe, then decide with the shared step (the host read only when the guard asks for it)."""
        observed = self.observe(now)
        pause = self.pause_at(now)
        forecast = self.forecast(observed, now)
        check = decide(self.rules, observed, self.memory, pause=pause, forecast=forecast)
        if isinstance(check, NeedsHost):
            assert self.limits is not None, "the guard is off: the step never asks for the host"
            check = decide(self.rules, observed, self.memory, host=Host(Headroom(cpu_some=host_cpu), self.limits),
                           pause=pause, forecast=forecast)
        assert isinstance(check, Check), "the step asks for the host only once"
        self.memory = check.memory
        self.learn(observed, now, forecast)
        return observed, check

    def forecast(self, observed: Observed, now: float) -> Forecast | None:
        """PREDICTIVE's input to this check's step (None: off), as the agent's loop asks for it: before deciding."""
        return None if self.predicting is None else self.predicting.forecast(self.rules, observed, EPOCH_S + now)

    def learn(self, observed: Observed, now: float, forecast: Forecast | None) -> None:
        """After the check's step: the forecast kept to be scored (as the agent's loop does)."""
        if self.predicting is not None and forecast is not None:
            self.predicting.learn(observed, EPOCH_S + now, forecast.lead_s)

    def pause_at(self, now: float) -> Pause | None:
        """The pause in force at simulated time `now`, as the agent's `PauseBook.get` would give it."""
        wall = EPOCH_S + now
        return next((p for p in self.pauses if p.since_s <= wall and p.active_at(wall)), None)

    def next_read_s(self, now: float, delay_s: float) -> float:
        """The agent's next read: no later than a pause's start or end (it checks at its deadline)."""
        wall = EPOCH_S + now
        edges = [t - wall for p in self.pauses for t in (p.since_s, p.until_s) if t is not None and t > wall]
        return min([delay_s, *edges])

    def act(self, check: Check, now: float) -> None:
        """Carry out the plan exactly: start `plan.start` (resetting `plan.reset`), stop `plan.stop`."""
        plan, pool, cfg = check.plan, self.pool, self.pool.cfg
        if plan.start:
            if plan.reset:  # a failed unit is a crash Restart= could not recover from: reused, but a failure
                self.failed_numbers.difference_update(plan.reset)
                self.backoff = self.backoff.after_failure(now)
                self.systemd_starts = {n: t for n, t in self.systemd_starts.items() if n not in plan.reset}
            self.batches += 1
            job_s = lookup(cfg.start_job_profile_s, now, 0.0)
            self.starts = startlimit.record(self.starts, plan.start, now)
            started = [pool.start(now, n, self.batches, job_s, cfg.check_s(), self._fails_after(n, now))
                       for n in plan.start]
            self.start_took.extend(job_s for _ in started)
            self.batch_failed[self.batches] = False
            heapq.heappush(self.judging, (max(w.checked_s for w in started), self.batches))
        if plan.stop:
            by_number = {w.number: w for w in pool.workers.values()}
            for n in plan.stop:
                pool.stop(by_number[n], now)

    def _fails_after(self, n: int, now: float) -> float | None:
        """How long a start of `n` at `now` lives if it fails (systemd's start limit, or a replayed failure)."""
        limited = self._start_limited(n, now)
        return limited if limited is not None else self._replayed_failure(now)

    def _start_limited(self, n: int, now: float) -> float | None:
        """systemd's start limit: 0 (the start fails at once, start-limit-hit) past the burst, else None."""
        past = startlimit.recent(self.systemd_starts.get(n, ()), now)
        self.systemd_starts = {**self.systemd_starts, n: (*past, now)}
        if len(past) < startlimit.BURST:
            return None
        self.start_limit_hits.append((now, n))
        return 0.0

    def _replayed_failure(self, now: float) -> float | None:
        """A real run's failed start within `failure_match_s` of `now` (used once): when its unit ended."""
        match = next((f for f in self.failures_left if abs(f[0] - now) <= self.pool.cfg.failure_match_s), None)
        if match is None:
            return None
        self.failures_left.remove(match)
        return match[1]

    def failed(self, w: Worker) -> None:
        """A start failed: its number stays failed until reused, and its batch backs off when judged."""
        self.failed_numbers.add(w.number)
        self.batch_failed[w.batch] = True

    def judge(self, now: float) -> None:
        """The batches whose checks have all ended by `now`, in order: back off after a failure, else note the
        success (`dqagent.systemd.jobtable`: one judgment per start batch, when its last check ends)."""
        while self.judging and self.judging[0][0] <= now:
            at, batch = heapq.heappop(self.judging)
            judged = self.backoff.after_failure if self.batch_failed.pop(batch) else self.backoff.after_success
            self.backoff = judged(at)



@cache
def _name(n: int, pool: str) -> str:
    return worker_unit(n, pool)


def _unit(w: Worker, now: float, flight: dict[int, Intent], pool: str) -> UnitState:
    """One live worker as systemd lists it, and the agent's job on it, if any (added to `flight`)."""
    n = w.number
    if w.stopping:
        flight[n] = Intent.STOP
        return UnitState(_name(n, pool), n, ActiveState.DEACTIVATING, "stop-sigterm", 1000 + n, w.active_enter_us,
                         0, "success", True, "stop", pool=pool)
    if now < w.job_end_s:
        flight[n] = Intent.START
        return UnitState(_name(n, pool), n, ActiveState.ACTIVATING, "start", 0, 0, 0, "", True, "start", pool=pool)
    if w.checked_s > now:
        flight[n] = Intent.START
    return UnitState(_name(n, pool), n, ActiveState.ACTIVE, "running", 1000 + n, w.active_enter_us, 0, "success",
                     False, pool=pool)

"""One check's decision, pure: what the agent and the simulator both call with what they observed.

No I/O and no clock of its own: the caller reads demand, the units, its jobs in flight, and (only
when asked) the host's headroom, then calls `decide`, then acts on the `Check` it returns. The agent
(`dqagent.agent.lifecycle`) does that against systemd and Redis; the simulator (`dqagent.sim.model`) against its
simulated units, so both reach every decision through the same rules.

The rules, in the order they apply:

1. **Count** the units (`reconciler.census`): the pool is running + coming; `starting` adds the running
   units still inside PROCESS_STARTUP_DELAY (their start check), by their ActiveEnterTimestamp.
2. **Recommend**: the policy on this host's `Observation`. In fleet mode the same policy over the
   fleet's summed [MIN, MAX] on the fleet's observation gives the global target G, and this host's
   target is its share of G (`dqagent.core.fleet.share_of`).
3. **Delayed messages**: a target of 0 while messages wait in the delay queue becomes 1: only a
   consumer moves due messages (and Dramatiq's retries) back to the queue. Metrics reason
   `delayed_messages`, in fleet mode too.
3b. **Prediction** (`dqagent.core.prediction`, PREDICTIVE): the forecast's floor raises the target to the workers
   the forecast count needs a measured start-up ahead (pre-warm), or keeps the running workers it needs again
   within the hold horizon; never lowers it, never leaves [MIN, MAX], only in mode `on` and only while the
   forecast's recent error is low (mode `shadow` reports what it would have done). Metrics reason `forecast`.
4. **Schedule** (`dqagent.core.schedule`, SCHEDULE): the windows in force at `Observed.now_us` bound the
   target: the highest floor raises it, the lowest ceiling lowers it (a floor above a ceiling wins), a floor
   from its pre-warm on (the measured start time `Observed.start_s` + PROCESS_STARTUP_DELAY before its window
   opens); the next read comes no later than the schedule's next change. Metrics reason `schedule`.
4b. **Pause** (`dqagent.core.pause.hold`): a paused pool's target is its count now, bounds widened to it
   (nothing starts or stops, whatever the schedule says); under maintenance (`pause --at N`) N clamped to
   MAX, never raised to MIN; the host budget does not apply to a pause (its count is frozen), the guard
   still holds a scale-up to N.
5. **Guard**: a target above the pool is capped by the host's headroom (`dqagent.core.guard.decide`). The
   headroom is read only for a scale-up: without it, `decide` returns `NeedsHost` and the caller reads
   the host and calls again with the same arguments.
6. **Reconcile** (`reconciler.reconcile`): clamp to [MIN, MAX], starts at the lowest free numbers
   unless the crash-loop backoff holds them, stops of the least busy settled units by the workers' reports
   (`dqagent.core.busy`; without reports the highest numbers), restarts of hung ones (`Observed.hung`; not
   while paused). **Start limits**
   (`dqagent.core.startlimit`): it starts no number the agent started near systemd's StartLimitBurst within
   StartLimitIntervalSec while another number is free (`Observed.starts`).
7. **Report**: the bounded metrics reason, the decision line's journal fields and whether it is
   routine (no change, logged at INFO at most once per CHECK_INTERVAL), and the next read time
   (CHECK_INTERVAL for `step`; the adaptive read interval for `target`).

**Broker failure** (`dqagent.core.brokerfail`): while demand cannot be read (`Observed.broker_down_since_s`),
BROKER_FAILURE replaces rules 2 and 3 (hold, or MIN / BROKER_FAILURE_COUNT after the grace period); the
schedule, a pause, the budget and the guard still apply after it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from dqagent.core import brokerfail, startlimit
from dqagent.core.budget import Allotment
from dqagent.core.busy import Load
from dqagent.core.guard import Headroom, Limits, Verdict
from dqagent.core.guard import decide as guard_decide
from dqagent.core.pause import Pause, hold
from dqagent.core.policies import FAST_READ_S, Decision, Observation, Policy, read_interval_s
from dqagent.core.prediction import Forecast, Predicted, forecast_fields, per_worker
from dqagent.core.prediction import floor as forecast_floor
from dqagent.core.reconciler import Backoff, Census, Intent, Plan, census, reconcile
from dqagent.core.schedule import InForce, in_force
from dqagent.core.snapshot import Reason, action_reason
from dqagent.settings.config import QueueMetric
from dqagent.settings.schedule import Schedule, zone_for

if TYPE_CHECKING:  # types only
    from datetime import tzinfo

    from dqagent.core.demand import Demand
    from dqagent.core.fleet import FleetView, Member, Share
    from dqagent.core.units import UnitState
    from dqagent.settings.config import Settings


#: No SCHEDULE.
NO_SCHEDULE = Schedule()


@dataclass(frozen=True, slots=True)
class Rules:
    """The settings one check decides with (`from_settings` for the agent; the simulator builds its own)."""

    policy: Policy
    min_processes: int
    max_processes: int
    #: Which count the policy is fed: outstanding or ready (QUEUE_METRIC).
    queue_metric: QueueMetric
    #: The adaptive read interval (SCALING_POLICY=target) instead of a fixed one.
    adaptive_reads: bool
    #: Seconds between reads: CHECK_INTERVAL, or DEMAND_POLL_INTERVAL with `target`.
    read_every_s: float
    #: The slowest read when idle (CHECK_INTERVAL), and the routine decision line's spacing.
    check_interval_s: float
    #: A running unit younger than this is still in its start check: counted as starting.
    startup_delay_s: float
    guard: bool
    queue_names: tuple[str, ...] = ()
    #: SCHEDULE (empty: none), read on the clock of `zone` (SCHEDULE_TIMEZONE's; None: the host's).
    schedule: Schedule = NO_SCHEDULE
    zone: tzinfo | None = None
    # -- rule 7 (broker failure) --
    broker_failure: brokerfail.BrokerFailure = brokerfail.HOLD

    @classmethod
    def from_settings(cls, s: Settings, policy: Policy) -> Rules:
        return cls(policy=policy, min_processes=s.min_processes, max_processes=s.max_processes,
                   queue_metric=s.queue_metric, adaptive_reads=s.scaling_policy != "step",
                   read_every_s=s.tick_interval_s(), check_interval_s=s.check_interval_s,
                   startup_delay_s=s.process_startup_delay_s, guard=s.guard, queue_names=s.queue_names,
                   schedule=s.schedule, zone=zone_for(s.schedule_timezone) if s.schedule else None,
                   broker_failure=brokerfail.BrokerFailure(brokerfail.Mode(s.broker_failure), s.broker_failure_count,
                                                           s.broker_failure_grace_s))


@dataclass(frozen=True, slots=True)
class Observed:
    """What one check read: demand, the worker units, and the caller's own jobs and backoff."""

    #: Monotonic seconds (the policy's clock, the backoff's, the decision line's spacing).
    now_s: float
    #: Wall-clock microseconds (against the units' ActiveEnterTimestamp).
    now_us: float
    demand: Demand
    units: Sequence[UnitState]
    in_flight: Mapping[int, Intent]
    backoff: Backoff
    #: Seconds a start takes (StartUnit until its job ends), as measured: the schedule's pre-warm lead is this
    #: plus PROCESS_STARTUP_DELAY.
    start_s: float = 0.0
    # -- rules 7 and 8 --
    #: Monotonic seconds of the first failed read of this outage; None: demand was read (`demand` is empty if set).
    broker_down_since_s: float | None = None
    #: The agent's own starts of each number within StartLimitIntervalSec (`dqagent.core.startlimit`).
    starts: startlimit.Starts = field(default_factory=dict)
    # -- rule 6: which worker is busy (`dqagent.core.busy`) --
    #: The workers' own reports by instance number (empty: the app did not opt in; the old stop order).
    loads: Mapping[int, Load] = field(default_factory=dict)
    #: Settled workers whose reports stopped advancing for WORKER_HUNG_AFTER: restarted (`busy.hung`).
    hung: frozenset[int] = frozenset()


@dataclass(frozen=True, slots=True)
class Memory:
    """What one check hands the next: the policy's state, the last outstanding count, the last INFO line."""

    policy_state: Any
    previous_outstanding: int | None = None
    last_logged_s: float = -math.inf


@dataclass(frozen=True, slots=True)
class Seen:
    """Rule 1: the units counted, and the policy's view of this host."""

    census: Census
    obs: Observation
    #: Rule 7: the outage's start (`Observed.broker_down_since_s`).
    broker_down_since_s: float | None = None


@dataclass(frozen=True, slots=True)
class FleetInput:
    """Fleet mode: this host's record as just published, and the fleet as read with it."""

    me: Member
    view: FleetView


@dataclass(frozen=True, slots=True)
class Host:
    """The guard's reading of the host, and its limits (a percentage reserve resolved against MemTotal)."""

    headroom: Headroom
    limits: Limits


@dataclass(frozen=True, slots=True)
class NeedsHost:
    """`decide` wants the host's headroom: a scale-up from `pool` to `wanted` is on the table."""

    pool: int
    wanted: int


@dataclass(frozen=True, slots=True)
class Check:
    """Everything one check decided."""

    seen: Seen
    #: The target after every rule but the clamp (the reconciler's), and why.
    decision: Decision
    verdict: Verdict
    plan: Plan
    #: The bounded `reason` label of this check's scale actions (`dqagent.core.snapshot.Reason` or the policy).
    label: str
    memory: Memory
    #: Fleet mode: this host's part of the fleet's decision.
    share: Share | None
    #: Whether the decision line is routine (DEBUG rather than INFO).
    routine: bool
    next_read_s: float
    rules: Rules
    demand: Demand
    #: With pools: this pool's part of HOST_MAX_PROCESSES (None: no host budget).
    budget: Allotment | None = None
    #: SCHEDULE at this check (None: no schedule).
    schedule: InForce | None = None
    #: PREDICTIVE at this check (None: off).
    predicted: Predicted | None = None

    @property
    def fields(self) -> dict[str, object]:
        """The decision line's journal fields: built when asked (the simulator decides without logging)."""
        c = self.seen.census
        d = self.demand
        return dict(queue=",".join(self.rules.queue_names), queue_length=self.seen.obs.queue_length,
                    workers=c.pool, running=c.running, target=self.decision.target, ready=d.ready,
                    in_flight=d.in_flight, delayed=d.delayed, dead_lettered=d.dead, orphaned=d.orphaned,
                    policy=self.rules.policy.name, breakdown=breakdown(d), oldest_age_s=format_age(d.oldest_age_s),
                    **(self.share.fields() if self.share is not None else {}),
                    **(forecast_fields(self.predicted) if self.predicted is not None else {}), **self.stop_fields())

    def stop_fields(self) -> dict[str, object]:
        """Which units this check stops or restarts and why (rule 6), for the decision line; {} when none."""
        plan = self.plan
        out: dict[str, object] = {}
        if plan.stop:
            out.update(stop_units=",".join(str(n) for n in plan.stop), stop_why=plan.stop_note,
                       all_busy=int(plan.all_busy))
        if plan.restart:
            out["restart_units"] = ",".join(str(n) for n in plan.restart)
        return out


def observe(rules: Rules, seen: Observed) -> Seen:
    """Rule 1 (pure): the census and the `Observation` the policy decides on."""
    counted = census(seen.units, seen.in_flight)
    young = sum(1 for u in seen.units
                if u.running and seen.now_us - u.active_enter_us < rules.startup_delay_s * 1e6)
    d = seen.demand
    obs = Observation(now_s=seen.now_s, queue_length=d.queue_length(rules.queue_metric), ready=d.ready,
                      in_flight=d.in_flight, delayed=d.delayed, workers=counted.pool,
                      starting=counted.coming + young, oldest_age_s=d.oldest_age_s)
    return Seen(counted, obs, seen.broker_down_since_s)


def decide(rules: Rules, observed: Observed, memory: Memory, *, fleet: FleetInput | None = None,
           host: Host | None = None, budget: Allotment | None = None, host_starting: int = 0,
           pause: Pause | None = None, forecast: Forecast | None = None) -> Check | NeedsHost:
    """The whole check (see the module docstring for the order of the rules). Pure and deterministic:
    the same arguments give the same result, so a `NeedsHost` answer is followed by the same call with
    `host` set. With pools (`dqagent.core.hoststep`): `budget` is the pool's part of HOST_MAX_PROCESSES,
    and `host_starting` the workers other pools start in the same check (the guard counts them as starting).
    `pause`: the pool's active pause or maintenance (rule 4b). `forecast`: PREDICTIVE's (rule 3b; None: off)."""
    seen = observe(rules, observed)
    decision, state, share, delayed = recommend(rules, seen, memory, fleet)
    decision, predicted, by_forecast = foreseen(rules, seen, decision, forecast)  # -- rule 3b --
    # -- rule 4, the schedule --
    window = scheduled(rules, observed)
    decision, by_schedule = bounded(decision, window)
    # -- rule 4b: pause / maintenance (dqagent.core.pause) --
    lo, hi = rules.min_processes, rules.max_processes
    if pause is not None:
        held = hold(pause, seen.census.pool, lo, hi, observed.now_us / 1e6)
        decision, lo, hi, delayed = Decision(held.target, held.reason), held.min_processes, held.max_processes, False
        budget = budget if pause.at is not None else None
    # -- end of rules 4 and 4b --
    capped = budget is not None and min(decision.target, rules.max_processes) > budget.cap
    if budget is not None and capped:
        decision = Decision(budget.cap, f"{decision.reason}; {budget_note(budget)}")
    pool = seen.census.pool
    if rules.guard and decision.target > pool:
        if host is None:
            return NeedsHost(pool, decision.target)
        verdict = guard_decide(pool, decision.target, lo, host.headroom, host.limits,
                               seen.obs.starting + host_starting)
    else:
        verdict = Verdict(decision.target, decision.target)
    if verdict.holding:
        decision = Decision(verdict.target, f"{decision.reason}; {verdict.status()}")
    plan = reconcile(observed.units, decision.target, min_processes=lo, max_processes=hi,
                     in_flight=observed.in_flight, backoff=observed.backoff, now_s=observed.now_s,
                     avoid=startlimit.worn(observed.starts, observed.now_s), loads=observed.loads,
                     hung=observed.hung if pause is None else frozenset())
    # The floor decided only where this host runs a worker for it (in fleet mode, a host whose share of G is 0
    # scales for the policy's reasons).
    label = (Reason.PAUSE if pause is not None else Reason.BROKER_FAILURE if seen.broker_down_since_s is not None
             else Reason.DELAYED_MESSAGES if delayed and decision.target > 0 and not by_schedule
             else Reason.HOST_BUDGET if capped else Reason.SCHEDULE if by_schedule
             else Reason.FORECAST if by_forecast
             else action_reason(rules.policy.name, decision.target, plan.wanted))
    routine = decision.target == pool and observed.now_s - memory.last_logged_s < rules.check_interval_s
    outstanding = seen.obs.outstanding
    next_read = (read_interval_s(rules.read_every_s, seen.obs, decision.target, memory.previous_outstanding,
                                 rules.check_interval_s) if rules.adaptive_reads else rules.read_every_s)
    if forecast is not None and forecast.watch:  # rule 3b: a forecast batch is read as it arrives
        next_read = min(next_read, FAST_READ_S)
    if window is not None and window.next_us is not None:  # the schedule's next change (rule 4)
        next_read = min(next_read, max(MIN_READ_S, (window.next_us - observed.now_us) / 1e6))
    memory = Memory(state, outstanding, memory.last_logged_s if routine else observed.now_s)
    return Check(seen, decision, verdict, plan, label, memory, share, routine, next_read, rules, observed.demand,
                 budget, window, predicted)


def foreseen(rules: Rules, seen: Seen, decision: Decision,
             forecast: Forecast | None) -> tuple[Decision, Predicted | None, bool]:
    """Rule 3b: the forecast's floor (none while the broker is down), what it did, and whether it raised the target."""
    if forecast is None or seen.broker_down_since_s is not None:
        return decision, None, False
    raised, predicted = forecast_floor(decision, seen.census.pool, forecast, per_worker(rules.policy),
                                       rules.min_processes, rules.max_processes)
    return raised, predicted, raised.target > decision.target


#: The soonest next read the schedule asks for (a change due now is read again just after it).
MIN_READ_S = 0.1


def scheduled(rules: Rules, observed: Observed) -> InForce | None:
    """Rule 4's windows at this check (None: no SCHEDULE), floors `startup_delay_s + start_s` early."""
    if not rules.schedule:
        return None
    zone = rules.zone if rules.zone is not None else zone_for("")
    return in_force(rules.schedule, zone, observed.now_us, rules.startup_delay_s + observed.start_s)


def bounded(decision: Decision, window: InForce | None) -> tuple[Decision, bool]:
    """Rule 4: the target within the schedule's floor and ceiling, and whether they changed it."""
    if window is None or (target := window.bound(decision.target)) == decision.target:
        return decision, False
    names = " + ".join(window.windows + window.warming)
    why = "floor" if target > decision.target else "ceiling"
    return Decision(target, f"{decision.reason}; schedule {why} {target} ({names})"), True


def budget_note(budget: Allotment) -> str:
    """Why the host budget capped a pool, for its decision line."""
    if budget.cap < budget.share:
        return f"host budget: {budget.share} of HOST_MAX_PROCESSES once others' stops free room, {budget.cap} now"
    if not budget.gave_way_to:
        return f"host budget: share {budget.share}, the pools' MIN_PROCESSES fill HOST_MAX_PROCESSES"
    return f"host budget: share {budget.share} of HOST_MAX_PROCESSES (room to {', '.join(budget.gave_way_to)})"


def recommend(rules: Rules, seen: Seen, memory: Memory,
               fleet: FleetInput | None) -> tuple[Decision, Any, Share | None, bool]:
    """Rules 2 and 3: the policy's target for this host (in fleet mode its share of the fleet's G, the
    delayed-message floor applied to G), its next state, and whether the delayed-message floor decided."""
    if (down := outage(rules, seen)) is not None:  # rule 7: no demand to decide on; the policy's state is kept
        return down.decision, memory.policy_state, None, False
    if fleet is None:
        decision, state = rules.policy.decide(seen.obs, memory.policy_state)
        decision, delayed = _delayed_floor(decision, seen.obs.delayed)
        return decision, state, None, delayed
    from dqagent.core.fleet import fleet_bounds, fleet_observation, fleet_policy, share_of

    others = fleet.view.others()
    lo, hi = fleet_bounds((*others, fleet.me))
    decision, state = fleet_policy(rules.policy, lo, hi).decide(
        fleet_observation(seen.obs, fleet.me, others), memory.policy_state)
    decision, delayed = _delayed_floor(decision, seen.obs.delayed)
    share = share_of(fleet.view, fleet.me, decision)
    return share.decision, state, share, delayed


def outage(rules: Rules, seen: Seen) -> brokerfail.Outage | None:
    """Rule 7: BROKER_FAILURE's decision while the broker cannot be read; None when it was read."""
    if seen.broker_down_since_s is None:
        return None
    return brokerfail.decide(rules.broker_failure, seen.census.pool, rules.min_processes, rules.max_processes,
                             seen.broker_down_since_s, seen.obs.now_s)


def _delayed_floor(decision: Decision, delayed: int) -> tuple[Decision, bool]:
    """Rule 3: 0 workers while messages are delayed is 1 (only a consumer makes due messages ready)."""
    if decision.target == 0 and delayed > 0:
        return Decision(1, decision.reason + f"; {delayed} delayed messages need a consumer"), True
    return decision, False


def breakdown(demand: Demand) -> str:
    """Per-queue figures in one journal field, e.g.
    `q1:ready=3,in_flight=8,delayed=0,dead=0,orphaned=0,oldest_age_s=4.2` (`oldest_age_s=` empty: none waits)."""
    return ";".join(f"{q.queue}:ready={q.ready},in_flight={q.in_flight},delayed={q.delayed},"
                    f"dead={q.dead},orphaned={q.orphaned},oldest_age_s={format_age(q.oldest_age_s)}"
                    for q in demand.queues)


def format_age(age_s: float | None) -> str:
    """An age for journal fields: seconds with one decimal, "" when no message waits."""
    return "" if age_s is None else f"{age_s:.1f}"

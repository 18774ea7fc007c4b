"""The loop's checks while the broker cannot be read: each pool decides by BROKER_FAILURE, through the step.

A read of Redis (or, in fleet mode, of the fleet's records) that fails starts an outage at that check's
monotonic time; every check until a read succeeds reads the units from systemd, calls the host step with no
demand and the outage's start (`dqagent.core.step`, rule 7; `dqagent.core.brokerfail`), and carries out its
plan like any check. `hold` keeps the workers (the behaviour before BROKER_FAILURE); `min` and `fixed` take
over when the grace period ends: the next try comes by then, whatever the Redis backoff says.

Reported: STATUS= names the choice ("redis unavailable (...), BROKER_FAILURE=fixed: 2 workers, retry in 8s"),
the journal logs `broker_failure_applied` when `min`/`fixed` takes over and `broker_failure_ended` when the
broker is read again (the policy decides again at that check), and the snapshot marks each pool
(`dqagent_broker_failure` in /metrics).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol

from dqagent.agent.pools import PoolRun
from dqagent.core.brokerfail import Mode
from dqagent.core.demand import Demand
from dqagent.core.reconciler import Backoff, Plan
from dqagent.core.snapshot import Snapshot
from dqagent.core.step import Check, FleetInput, Observed, outage
from dqagent.core.units import UnitState, of_pool
from dqagent.report.logs import event
from dqagent.systemd.jobtable import UnitManager

log = logging.getLogger("dqagent.agent.loop")  # the loop's events

#: A check due when the grace period ends comes this much after it (timers may wake early).
GRACE_SLACK_S = 0.1


@dataclass(slots=True)
class OutageState:
    """The current outage, if any: its start, and the pools whose `min`/`fixed` applies (for their events)."""

    since_s: float | None = None
    applied: set[str] = field(default_factory=set)


class Loop(Protocol):
    """What these checks use of `dqagent.agent.loop.Loop`."""

    units: UnitManager
    clock: Callable[[], float]
    wallclock: Callable[[], float]
    runs: dict[str, PoolRun]
    outage: OutageState

    async def _decide(self, base: Mapping[str, Observed], fleets: Mapping[str, FleetInput]) -> dict[str, Check]: ...
    def _of(self, run: PoolRun) -> str: ...
    def _issue(self, run: PoolRun, plan: Plan, states: Sequence[UnitState], reason: str, label: str) -> None: ...
    def _figures(self, base: Mapping[str, Observed], checks: Mapping[str, Check]) -> None: ...
    def _redis_down(self, message: str, note: str = ...) -> float: ...
    def _publish(self, snap: Snapshot) -> None: ...
    def _snapshot(self, *, redis_up: bool) -> Snapshot: ...


async def decide_without_broker(loop: Loop, message: str) -> float:
    """One check with the broker unreadable: every pool decides by BROKER_FAILURE and acts. Returns the delay
    until the next try: the Redis backoff, shortened to the end of a grace period still running."""
    state = loop.outage
    if state.since_s is None:
        state.since_s = loop.clock()
    states = await loop.units.worker_states(brief=("ActiveEnterTimestamp", "MainPID"))  # (PIDs: the status page)
    now_s, now_us = loop.clock(), loop.wallclock() * 1e6
    base = {name: Observed(now_s, now_us, Demand(()), of_pool(states, name), {}, Backoff(),
                           broker_down_since_s=state.since_s) for name in loop.runs}
    checks = await loop._decide(base, {})
    notes: list[str] = []
    grace_left = math.inf
    for name, check in checks.items():
        run = loop.runs[name]
        run.memory = replace(check.memory, previous_outstanding=run.memory.previous_outstanding)
        run.due_s = -math.inf  # every pool decides at the next check, whatever its schedule
        down = outage(check.rules, check.seen)
        assert down is not None, "an Observed with broker_down_since_s makes an outage"
        rule = check.rules.broker_failure
        run.outage = rule.mode.value if down.applied or rule.mode is Mode.HOLD else Mode.HOLD.value
        if down.grace_left_s > 0:
            grace_left = min(grace_left, down.grace_left_s)
        if down.applied and name not in state.applied:
            state.applied.add(name)
            log.warning("broker unreadable for %.0fs: pool %s goes to %d workers (BROKER_FAILURE=%s)",
                        now_s - state.since_s, name, check.plan.wanted, rule.mode.value,
                        extra=event("broker_failure_applied", dqagent_pool=name, mode=rule.mode.value,
                                    workers=check.seen.census.pool, target=check.plan.wanted))
        pool_units = of_pool(states, name)
        log.log(logging.INFO if not check.plan.empty else logging.DEBUG, "decision%s: %d -> %d workers (%s)",
                loop._of(run), check.seen.census.pool, check.decision.target, check.decision.reason,
                extra=event("decision", dqagent_pool=name, **check.fields))
        loop._issue(run, check.plan, pool_units, check.decision.reason, check.label)
        notes.append((f"{name}: " if len(loop.runs) > 1 else "") + down.status(rule))
    loop._figures(base, checks)
    retry = loop._redis_down(message, note="; ".join(notes))
    loop._publish(loop._snapshot(redis_up=False))
    return min(retry, grace_left + GRACE_SLACK_S)


def broker_back(loop: Loop) -> None:
    """The broker (and in fleet mode the fleet) was read: end the outage, logged for each pool whose choice
    applied. Every pool decides by its policy in this check (the outage's checks left each one due)."""
    state = loop.outage
    if state.since_s is None:
        return
    down_s = loop.clock() - state.since_s
    for name, run in loop.runs.items():
        if run.outage:
            log.info("broker readable again after %.0fs: pool %s follows its policy again (BROKER_FAILURE=%s)",
                     down_s, name, run.s.broker_failure,
                     extra=event("broker_failure_ended", dqagent_pool=name, mode=run.s.broker_failure,
                                 down_s=f"{down_s:.0f}"))
            run.outage = ""
    loop.outage = OutageState()

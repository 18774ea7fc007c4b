"""One check of every pool on a host, pure: each pool's step, with the host budget and the guard shared.

What the agent's loop and the simulator both call. The order:

1. Each pool's own step recommends (`dqagent.core.step.recommend`: its policy, the delayed-message floor),
   clamped to its [MIN, MAX]: its claim.
2. The host budget (`dqagent.core.budget.apportion`) turns the claims into each pool's share of
   HOST_MAX_PROCESSES, and the cap for this check (growth only into room that is free now).
3. Each pool's step decides (`dqagent.core.step.decide`) with its cap, highest priority first; the guard
   counts the workers that pools before it start in this check as starting (their memory does not show
   yet), so two pools cannot both take the same headroom.

With one pool and no HOST_MAX_PROCESSES, this is exactly `decide` of that pool.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from dqagent.core.budget import Allotment, Claim, apportion
from dqagent.core.pause import Pause, hold
from dqagent.core.prediction import Forecast
from dqagent.core.step import (
    Check,
    FleetInput,
    Host,
    Memory,
    NeedsHost,
    Observed,
    Rules,
    bounded,
    decide,
    observe,
    recommend,
    scheduled,
)

#: A pool whose next read is due this close after a check's time decides in that check (timers wake early).
DUE_SLACK_S = 0.05


def is_due(due_s: float, now_s: float, pools: int) -> bool:
    """Whether a pool decides in the check at `now_s`: each pool decides on its own schedule (its policy's next
    read, `Check.next_read_s` after its last check), and the check runs at the earliest of them. A lone pool
    decides at every check (its schedule is the check's)."""
    return pools == 1 or due_s <= now_s + DUE_SLACK_S


@dataclass(frozen=True, slots=True)
class PoolInput:
    """What one pool's check reads: its rules and priority, what it observed, what its last check left."""

    name: str
    rules: Rules
    observed: Observed
    memory: Memory
    priority: int = 0
    #: Fleet mode (single pool only): this host's record and the fleet's.
    fleet: FleetInput | None = None
    #: Whether the pool decides in this check (its next read is due); one that is not claims its current size.
    due: bool = True
    #: A pool a reload removed: it decides nothing and claims none of the budget, but its units still count
    #: until they are gone.
    retiring: bool = False
    #: The pool's active pause or maintenance (`dqagent.core.pause`; step rule 4b): it claims what it holds.
    pause: Pause | None = None
    #: PREDICTIVE's forecast for this check (step rule 3b; None: off). It only raises the pool's own target, so
    #: its claim on the budget is the policy's (a forecast never takes room from another pool's present work).
    forecast: Forecast | None = None


def claims(pools: Sequence[PoolInput]) -> list[Claim]:
    """Rule 1: each pool's claim, from its own recommendation and its units now."""
    out: list[Claim] = []
    for p in pools:
        seen = observe(p.rules, p.observed)
        c = seen.census
        if p.retiring:
            out.append(Claim(p.name, p.priority, 0, p.rules.max_processes, 0, current=c.pool, going=c.going))
            continue
        wanted = (bounded(recommend(p.rules, seen, p.memory, p.fleet)[0], scheduled(p.rules, p.observed))[0].target
                  if p.due else c.pool)  # (with the schedule's bounds, rule 4 of the step)
        if p.pause is not None:  # (rule 4b of the step)
            wanted = hold(p.pause, c.pool, p.rules.min_processes, p.rules.max_processes, p.observed.now_us / 1e6).target
        out.append(Claim(p.name, p.priority, p.rules.min_processes, p.rules.max_processes, wanted,
                         current=c.pool, going=c.going))
    return out


def decide_host(pools: Sequence[PoolInput], budget: int | None, host: Host | None = None
                ) -> dict[str, Check] | NeedsHost:
    """Every due pool's `Check`, by name (in priority order), or `NeedsHost` when some pool's scale-up needs
    the host's headroom: then read the host and call again with the same arguments and `host` set. A pool
    that is not due gets no check: it claims its current size, so the others' shares leave it room."""
    allotted: Mapping[str, Allotment] | None = apportion(budget, claims(pools)) if budget is not None else None
    out: dict[str, Check] = {}
    starting = 0
    for p in sorted(pools, key=lambda p: (-p.priority, p.name)):
        if not p.due or p.retiring:
            continue
        check = decide(p.rules, p.observed, p.memory, fleet=p.fleet, host=host,
                       budget=allotted[p.name] if allotted is not None else None, host_starting=starting,
                       pause=p.pause, forecast=p.forecast)
        if isinstance(check, NeedsHost):
            return check
        starting += len(check.plan.start)
        out[p.name] = check
    return out

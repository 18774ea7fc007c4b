"""The host budget: HOST_MAX_PROCESSES shared between pools by priority (pure).

Each pool claims what its own step wants (its target within [MIN, MAX]). When the claims fit the budget,
every pool gets its claim. When they do not, every pool first gets its MIN (the settings guarantee the MINs
fit), then the rest of the budget goes to the pools by priority, highest first; pools of equal priority
share their level's room evenly (one worker at a time, by name on a tie), never above their claim.

A pool's share is what it runs once every stop has finished. How far it may grow *this* check is its
`cap`: a pool above its share shrinks to it at once (graceful stops, as every stop), and a pool below its
share grows only into room that is free now, the budget minus every unit that holds a number (running,
starting and still stopping), highest priority first. So the host never runs more than the budget, even
while a lower-priority pool's workers drain to make room for a higher one's burst.

Properties (tested with hypothesis): the shares sum to min(budget, claims); each share is in [MIN, claim];
a pool left short means every lower-priority pool is at its MIN; lowering one pool's claim never lowers
another's share; raising a pool's own claim never lowers its share; the units after a check never exceed
the budget unless they already did.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Claim:
    """One pool's claim on the host: its bounds, priority, what its step wants, and its units now."""

    pool: str
    priority: int
    min_processes: int
    max_processes: int
    #: The pool's own target (its policy, the delayed-message floor), before the budget.
    wanted: int
    #: Units counted as the pool: running + coming (`dqagent.core.reconciler.Census.pool`).
    current: int = 0
    #: Units still stopping: they hold memory and a number until they are gone.
    going: int = 0

    @property
    def claim(self) -> int:
        return max(self.min_processes, min(self.max_processes, self.wanted))


@dataclass(frozen=True, slots=True)
class Allotment:
    """A pool's part of the budget."""

    #: What the pool runs once every stop has finished: its claim, or less when the host is short.
    share: int
    #: The most the pool may count after this check: the share, or less while room is still draining.
    cap: int
    #: The pools that took room this pool claimed (higher priority, or equal priority sharing), by name; empty
    #: when the pool is short only because the MINs fill the budget.
    gave_way_to: tuple[str, ...] = ()
    #: What the pool claimed (its own target within [MIN, MAX]).
    claim: int = 0

    @property
    def short(self) -> bool:
        """The budget left the pool below its claim."""
        return self.share < self.claim


def _order(claims: Sequence[Claim]) -> list[Claim]:
    return sorted(claims, key=lambda c: (-c.priority, c.pool))


def shares(budget: int | None, claims: Sequence[Claim]) -> dict[str, int]:
    """Each pool's share of `budget` (None: no cap, every claim in full)."""
    wanted = {c.pool: c.claim for c in claims}
    if budget is None or sum(wanted.values()) <= budget:
        return wanted
    out = {c.pool: c.min_processes for c in claims}
    left = max(0, budget - sum(out.values()))
    levels: dict[int, list[Claim]] = {}
    for c in _order(claims):
        levels.setdefault(c.priority, []).append(c)
    for level in levels.values():
        if left == 0:
            break
        need = {c.pool: wanted[c.pool] - out[c.pool] for c in level}
        if sum(need.values()) <= left:
            for c in level:
                out[c.pool] += need[c.pool]
            left -= sum(need.values())
            continue
        # Water-fill: equal steps, the smallest needs satisfied first; the last step's remainder by name. A pool
        # whose claim is its MIN needs nothing: it takes no step (nor a remainder's worker).
        hungry = sorted((c for c in level if need[c.pool] > 0), key=lambda c: (need[c.pool], c.pool))
        while left > 0 and hungry:
            step = min(need[hungry[0].pool], left // len(hungry))
            if step == 0:
                for c in sorted(hungry, key=lambda c: c.pool)[:left]:
                    out[c.pool] += 1
                left = 0
                break
            for c in hungry:
                out[c.pool] += step
                need[c.pool] -= step
            left -= step * len(hungry)
            hungry = [c for c in hungry if need[c.pool] > 0]
    return out


def apportion(budget: int | None, claims: Sequence[Claim]) -> dict[str, Allotment]:
    """Each pool's `Allotment` (see the module docstring)."""
    share = shares(budget, claims)
    # A pool's MIN is never held back (the reconciler starts it anyway): its growth to MIN comes first, and
    # the free room left after it goes by priority.
    room = None if budget is None else budget - sum(max(c.current, c.min_processes) + c.going for c in claims)
    out: dict[str, Allotment] = {}
    for c in _order(claims):
        s = share[c.pool]
        base = max(c.current, c.min_processes)
        grow = max(0, s - base)
        if room is not None:
            grow = min(grow, max(0, room))
            room -= grow
        cap = min(s, base + grow)
        takers = () if s >= c.claim else tuple(
            o.pool for o in _order(claims) if o.pool != c.pool and o.priority >= c.priority and share[o.pool] > 0
            and share[o.pool] > o.min_processes)
        out[c.pool] = Allotment(s, cap, takers, c.claim)
    return out

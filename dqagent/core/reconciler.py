"""The reconciler: observed worker units + the policy's target -> the actions that close the gap.

Pure: no I/O and no clock; time (`now_s`, monotonic seconds) and the agent's own memory (the jobs it
has in flight, the crash-loop backoff) are arguments, so every rule below is property-tested
(tests/unit/test_reconciler.py). Like a Kubernetes controller it is level-triggered and idempotent:
it reads what systemd shows each time and acts only on the difference.

Counting rules (a unit's *phase*, see `classify`):

- **running** (capacity now): ActiveState `active` or `reloading`, no start/stop job.
- **coming** (capacity on its way): `activating`, including SubState `auto-restart` (a crashed unit
  waiting RestartSec is ActiveState=activating on systemd 252); any unit with a start-like job
  (start, restart, try-restart, reload-or-start), whoever queued it; and every unit the agent is
  starting itself (its job, or the PROCESS_STARTUP_DELAY check after it), listed yet or not.
- **going**: `deactivating`, or a stop job, or a unit the agent is stopping itself.
- **failing**: ActiveState `failed` (`UnitState.failed`, also `start-limit-hit`): no process, but it
  holds its instance number until it is reset. (A unit in auto-restart is `UnitState.crashed` too,
  and STATUS= names it as failing, but it counts as coming: `dqagent.core.units` has the three notions.)
- **free**: `inactive` (or not listed at all), no job, not in flight.
- An ActiveState systemd does not document (`unknown` here) counts as coming, never as free: the
  reconciler would rather miss a start than exceed MAX_PROCESSES.

The pool is running + coming; `wanted` is the target clamped to [MIN, MAX].

- pool < wanted: start `wanted - pool` instances at the lowest free numbers not in `avoid` (those
  near systemd's start limit, `dqagent.core.startlimit`; taken last) (a failed number is
  reused after `ResetFailedUnit`, listed in `reset`), unless the crash-loop backoff holds starts
  (`Backoff`: the agent counts a failed start check, and the reuse of a crashed unit's number, as a
  failure).
- pool > wanted: stop `pool - wanted` *settled* units (active/running, no job, not in flight), the least
  busy first by the workers' own reports (`dqagent.core.busy.stop_order`: hung, idle, no report, prefetched
  only, fewest running), ties (and every unit without reports) by the highest number; fewer if not enough
  are settled (the rest wait for the next tick), and no busy one while the agent's own starts are in flight
  (those units settle within their check, most likely idle).
- hung (settled units `dqagent.core.busy.hung` names): restarted (stop, then start of the same number: it
  counts as coming meanwhile), unless a scale-down stops it or the crash-loop backoff holds starts.
- A unit with a job the agent did not start (an operator's restart, reload or stop) is never
  stopped, started, reset or counted as free: no operator job is ever cancelled.
- No action takes the pool outside [MIN, MAX] (nor past `wanted` in either direction), and
  after the agent records the plan's actions as in flight, the same observation yields an empty
  plan (idempotent).

Example: 4 wanted, one unit in auto-restart after a crash: 3 running + 1 coming = 4, so nothing
is stopped and nothing extra is started.
"""

from __future__ import annotations

import itertools
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum

from dqagent.core.busy import Load, Rank, all_busy, rank_of, stop_note, stop_order
from dqagent.core.units import MAX_INSTANCE, UnitState

#: Job types that (re)start a unit; "stop" stops it. Others (reload, verify-active, nop) change neither.
START_JOBS = frozenset({"start", "restart", "try-restart", "reload-or-start"})
STOP_JOBS = frozenset({"stop"})
#: Crash-loop backoff: first pause, and the cap of its doubling.
BACKOFF_FIRST_S = 5.0
BACKOFF_MAX_S = 300.0


class Intent(StrEnum):
    """What the agent itself is doing to a unit (its job, or the start check after it)."""

    START = "start"
    STOP = "stop"
    #: A hung worker's stop, then its start: capacity on its way back (counted as coming).
    RESTART = "restart"


class Phase(StrEnum):
    """Where a unit stands for counting (see the module docstring).

    FAILING is `UnitState.failed` only, not `UnitState.crashed`: a unit in auto-restart is capacity
    that systemd brings back by itself, so it counts as COMING (see `dqagent.core.units` for all three).
    """

    RUNNING = "running"
    COMING = "coming"
    GOING = "going"
    FAILING = "failing"
    FREE = "free"


@dataclass(frozen=True, slots=True)
class Backoff:
    """Crash-loop backoff for starts: after `failures` failed starts, no start before `until_s`.

    A start that passes its check lifts the hold but keeps the count until BACKOFF_MAX_S have passed
    since the last failure, so a worker that survives its check and then crash-loops still backs off
    further each time (a check passed under load proves little).
    """

    failures: int = 0
    until_s: float = 0.0
    last_failure_s: float = 0.0

    def holds(self, now_s: float) -> bool:
        return self.failures > 0 and now_s < self.until_s

    def after_failure(self, now_s: float, first_s: float = BACKOFF_FIRST_S,
                      cap_s: float = BACKOFF_MAX_S) -> Backoff:
        """One more failed start: wait first_s, then twice as long each time, at most cap_s."""
        delay = min(cap_s, first_s * 2.0 ** min(self.failures, 30))
        return Backoff(self.failures + 1, now_s + delay, now_s)

    def after_success(self, now_s: float, cap_s: float = BACKOFF_MAX_S) -> Backoff:
        """A start passed its check: forget the failures once the last one is cap_s old."""
        return Backoff() if now_s - self.last_failure_s >= cap_s else self

    def remaining_s(self, now_s: float) -> float:
        return max(0.0, self.until_s - now_s) if self.failures else 0.0


@dataclass(frozen=True, slots=True)
class Census:
    """How many units are in each phase (see the module docstring)."""

    running: int
    coming: int
    going: int
    #: Units crashed (`UnitState.crashed`: failed, or in auto-restart): a reporting figure, not `Phase.FAILING`'s
    #: count, since a unit in auto-restart also counts as coming.
    failing: int
    #: Units with a job the agent did not start: left alone.
    foreign: tuple[int, ...] = ()

    @property
    def pool(self) -> int:
        """Capacity now and on its way: what the target is compared with."""
        return self.running + self.coming


@dataclass(frozen=True, slots=True)
class Plan:
    """The actions for one tick (instance numbers) and the census they were computed from."""

    #: Instances to start, lowest free numbers first.
    start: tuple[int, ...]
    #: Of `start`, the failed units to `ResetFailedUnit` before starting them.
    reset: tuple[int, ...]
    #: Settled instances to stop, highest numbers first.
    stop: tuple[int, ...]
    #: The target clamped to [MIN, MAX].
    wanted: int
    census: Census
    #: A start was needed but the crash-loop backoff held it.
    held_by_backoff: bool = False
    #: Hung settled instances to restart (stop, then start the same number).
    restart: tuple[int, ...] = ()
    #: Why `stop` holds these units (`dqagent.core.busy.stop_note`), "" without reports or stops.
    stop_note: str = ""
    #: Every stop candidate was busy (reported, none idle): the stop interrupts or requeues work.
    all_busy: bool = False

    @property
    def pool(self) -> int:
        return self.census.pool

    @property
    def empty(self) -> bool:
        return not (self.start or self.stop or self.reset or self.restart)


def has_foreign_job(state: UnitState, intent: Intent | None) -> bool:
    """A pending job the agent did not start (it only ever has jobs on units it has in flight)."""
    return bool(state.job_type) and intent is None


def stoppable(states: Sequence[UnitState], in_flight: Mapping[int, Intent]) -> list[UnitState]:
    """The units the agent may stop when it stops a whole pool (its own stop, a pool a reload removed): those
    holding a number, but not one with an operator's job nor one it is stopping already."""
    return [s for s in states if s.occupied and not has_foreign_job(s, in_flight.get(s.instance))
            and in_flight.get(s.instance) is not Intent.STOP]


def classify(state: UnitState, intent: Intent | None = None) -> Phase:
    """The phase of one listed unit, given what the agent itself is doing to it (if anything)."""
    if intent is Intent.RESTART:
        return Phase.COMING
    if intent is Intent.STOP:
        return Phase.GOING if state.active_state not in ("inactive", "failed") else _by_state(state)
    if state.job_type in STOP_JOBS:
        return Phase.GOING
    if state.job_type in START_JOBS:
        return Phase.COMING
    phase = _by_state(state)
    if intent is Intent.START and phase in (Phase.FREE, Phase.FAILING):
        return Phase.COMING  # our start is queued, or its check has not judged it yet
    return phase


def _by_state(state: UnitState) -> Phase:
    active = state.active_state
    if active in ("active", "reloading"):
        return Phase.RUNNING
    if active == "deactivating":
        return Phase.GOING
    if state.failed:
        return Phase.FAILING
    if active == "inactive":
        return Phase.FREE
    return Phase.COMING  # activating (incl. auto-restart), and any state we do not know


def settled(state: UnitState, intent: Intent | None) -> bool:
    """A stop candidate: active/running, no job of anyone's, nothing of ours in flight."""
    return (intent is None and not state.job_type and state.active_state == "active"
            and state.sub_state == "running")


def census(states: Sequence[UnitState], in_flight: Mapping[int, Intent]) -> Census:
    """Count the units by phase; the agent's own starts not listed (yet) count as coming."""
    listed = {s.instance for s in states}
    phases = [classify(s, in_flight.get(s.instance)) for s in states]
    unlisted_starts = sum(1 for n, i in in_flight.items() if i is not Intent.STOP and n not in listed)
    return Census(running=phases.count(Phase.RUNNING), coming=phases.count(Phase.COMING) + unlisted_starts,
                  going=phases.count(Phase.GOING), failing=sum(1 for s in states if s.crashed),
                  foreign=tuple(s.instance for s in states if has_foreign_job(s, in_flight.get(s.instance))))


def reconcile(states: Sequence[UnitState], target: int, *, min_processes: int, max_processes: int,
              in_flight: Mapping[int, Intent], backoff: Backoff, now_s: float,
              avoid: Collection[int] = frozenset(), loads: Mapping[int, Load] | None = None,
              hung: Collection[int] = frozenset()) -> Plan:
    """The actions that move the pool toward `target` (clamped), under the rules of the module docstring.
    `avoid`: numbers started only when no other is free (near systemd's start limit, `dqagent.core.startlimit`).
    `loads`: the workers' reports by number (`dqagent.core.busy`; none: the highest numbers stop first);
    `hung`: the numbers `dqagent.core.busy.hung` named (restarted, or stopped first)."""
    wanted = max(min_processes, min(max_processes, target))
    counted = census(states, in_flight)
    by_number = {s.instance: s for s in states}
    start: tuple[int, ...] = ()
    reset: tuple[int, ...] = ()
    stop: tuple[int, ...] = ()
    held = False
    loads = loads or {}
    candidates = [s.instance for s in states if settled(s, in_flight.get(s.instance))]
    hung = frozenset(n for n in hung if n in candidates)
    if counted.pool < wanted:
        if backoff.holds(now_s):
            held = True
        else:
            free = _free_numbers(by_number, in_flight)
            if avoid:
                free = itertools.chain((n for n in free if n not in avoid),
                                       (n for n in _free_numbers(by_number, in_flight) if n in avoid))
            start = tuple(itertools.islice(free, wanted - counted.pool))
            reset = tuple(n for n in start if n in by_number and by_number[n].active_state == "failed")
    elif counted.pool > wanted:
        stop = tuple(_deferring_busy(stop_order(candidates, loads, hung)[:counted.pool - wanted], loads, hung,
                                     starting=any(i is not Intent.STOP for i in in_flight.values())))
    restart = () if backoff.holds(now_s) else tuple(sorted(hung.difference(stop)))
    note = stop_note(stop, candidates, loads, hung, "@{}") if loads or hung else ""
    return Plan(start=start, reset=reset, stop=stop, wanted=wanted, census=counted, held_by_backoff=held,
                restart=restart, stop_note=note, all_busy=bool(stop) and all_busy(candidates, loads, hung))


def _deferring_busy(chosen: Sequence[int], loads: Mapping[int, Load], hung: Collection[int],
                    starting: bool) -> list[int]:
    """The chosen stops up to the first busy one while the agent's own starts are in flight: those units settle
    within their start check and are most likely idle, so a busy worker's stop waits for the next check."""
    if not starting:
        return list(chosen)
    return list(itertools.takewhile(lambda n: rank_of(n, loads, hung) < Rank.PREFETCHED, chosen))


def _free_numbers(by_number: Mapping[int, UnitState], in_flight: Mapping[int, Intent]) -> Iterator[int]:
    """Instance numbers from 1 up whose unit is free, or failed with no job (reusable after a reset)."""
    def usable(n: int) -> bool:
        if n in in_flight:
            return False
        state = by_number.get(n)
        return state is None or (not state.job_type and _by_state(state) in (Phase.FREE, Phase.FAILING))

    return (n for n in range(1, MAX_INSTANCE + 1) if usable(n))

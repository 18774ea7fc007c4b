"""Properties of the pure reconciler over generated sets of unit states (every ActiveState, sub-states
including auto-restart and start-limit-hit, jobs ours and an operator's), plus the worked examples."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

from hypothesis import given, settings
from hypothesis import strategies as st

from dqagent.core.reconciler import (
    BACKOFF_MAX_S,
    Backoff,
    Intent,
    Phase,
    Plan,
    classify,
    has_foreign_job,
    reconcile,
    settled,
)
from dqagent.core.units import ActiveState, UnitState

#: Sub-states systemd 252 shows for a service in each ActiveState (service.c's state table).
SUB_STATES: dict[ActiveState, tuple[str, ...]] = {
    ActiveState.ACTIVE: ("running", "exited"),
    ActiveState.RELOADING: ("reload",),
    ActiveState.INACTIVE: ("dead",),
    ActiveState.FAILED: ("failed",),
    ActiveState.ACTIVATING: ("start", "start-pre", "auto-restart", "condition"),
    ActiveState.DEACTIVATING: ("stop-sigterm", "stop", "stop-sigkill", "final-sigterm", "stop-post"),
    ActiveState.UNKNOWN: ("",),
}
RESULTS = ("success", "exit-code", "signal", "timeout", "start-limit-hit", "core-dump")
JOBS = ("", "", "", "start", "stop", "restart", "reload", "try-restart", "verify-active", "reload-or-start", "nop")


def unit(n: int, active: ActiveState = ActiveState.ACTIVE, sub: str = "running", job: str = "",
         result: str = "success") -> UnitState:
    return UnitState(f"dramatiq-worker@{n}.service", n, active, sub, 100 + n if sub == "running" else 0,
                     1, 0, result, bool(job), job, 7 if job else 0)


@st.composite
def unit_states(draw: st.DrawFn, n: int) -> UnitState:
    active = draw(st.sampled_from(list(ActiveState)))
    return unit(n, active, draw(st.sampled_from(SUB_STATES[active])), draw(st.sampled_from(JOBS)),
                draw(st.sampled_from(RESULTS)))


@dataclass(frozen=True)
class World:
    states: tuple[UnitState, ...]
    in_flight: Mapping[int, Intent]
    target: int
    lo: int
    hi: int
    backoff: Backoff
    now_s: float

    def plan(self) -> Plan:
        return reconcile(self.states, self.target, min_processes=self.lo, max_processes=self.hi,
                         in_flight=self.in_flight, backoff=self.backoff, now_s=self.now_s)


@st.composite
def worlds(draw: st.DrawFn) -> World:
    numbers = draw(st.sets(st.integers(1, 14), max_size=12))
    states = tuple(draw(unit_states(n)) for n in sorted(numbers))
    # The agent has jobs in flight on some listed units and on some not listed (yet, or any more).
    flight_numbers = draw(st.sets(st.integers(1, 16), max_size=5))
    in_flight = {n: draw(st.sampled_from(list(Intent))) for n in flight_numbers}
    lo = draw(st.integers(0, 8))
    hi = draw(st.integers(max(lo, 1), 14))
    backoff = draw(st.sampled_from([Backoff(), Backoff(2, 150.0), Backoff(1, 50.0)]))
    return World(states, in_flight, draw(st.integers(0, 20)), lo, hi, backoff, 100.0)


def apply_as_in_flight(world: World, plan: Plan) -> World:
    """What the agent records after issuing the plan's jobs (systemd has not moved yet)."""
    flight = dict(world.in_flight)
    flight.update({n: Intent.START for n in plan.start})
    flight.update({n: Intent.STOP for n in plan.stop})
    flight.update({n: Intent.RESTART for n in plan.restart})
    return replace(world, in_flight=flight)


def finish_jobs(world: World, plan: Plan) -> World:
    """systemd has done every job: started units run, stopped units are gone, nothing in flight."""
    by_n = {s.instance: s for s in world.states}
    for n in plan.start:
        by_n[n] = unit(n)
    for n in plan.stop:
        del by_n[n]
    # Earlier jobs of ours finished the same way.
    for n, intent in world.in_flight.items():
        if intent in (Intent.START, Intent.RESTART):
            by_n[n] = unit(n)
        else:
            by_n.pop(n, None)
    return replace(world, states=tuple(by_n[n] for n in sorted(by_n)), in_flight={})


def is_ours(world: World, n: int) -> bool:
    return n in world.in_flight


@settings(max_examples=300)
@given(worlds())
def test_operator_jobs_are_never_touched(world: World) -> None:
    plan = world.plan()
    foreign = {s.instance for s in world.states if has_foreign_job(s, world.in_flight.get(s.instance))}
    assert not foreign & (set(plan.start) | set(plan.stop) | set(plan.reset))
    assert set(plan.census.foreign) == foreign


@settings(max_examples=300)
@given(worlds())
def test_only_settled_units_are_stopped_highest_first(world: World) -> None:
    plan = world.plan()
    by_n = {s.instance: s for s in world.states}
    assert all(settled(by_n[n], world.in_flight.get(n)) for n in plan.stop)
    kept = [s.instance for s in world.states if settled(s, world.in_flight.get(s.instance)) and
            s.instance not in plan.stop]
    assert all(k < n for k in kept for n in plan.stop)
    assert list(plan.stop) == sorted(plan.stop, reverse=True)


@settings(max_examples=300)
@given(worlds())
def test_starts_use_the_lowest_free_numbers_and_reset_only_failed_units(world: World) -> None:
    plan = world.plan()
    by_n = {s.instance: s for s in world.states}

    def usable(n: int) -> bool:
        s = by_n.get(n)
        return not is_ours(world, n) and (s is None or (not s.job_type and s.active_state in ("inactive", "failed")))

    assert len(set(plan.start)) == len(plan.start)
    assert all(usable(n) for n in plan.start)
    if plan.start:
        assert all(not usable(n) or n in plan.start for n in range(1, max(plan.start)))
    assert set(plan.reset) <= set(plan.start)
    assert set(plan.reset) == {n for n in plan.start if n in by_n and by_n[n].active_state == "failed"}


@settings(max_examples=300)
@given(worlds())
def test_the_pool_moves_toward_wanted_and_never_leaves_min_max(world: World) -> None:
    plan = world.plan()
    assert plan.wanted == max(world.lo, min(world.hi, world.target))
    after = plan.pool + len(plan.start) - len(plan.stop)
    assert min(plan.pool, plan.wanted) <= after <= max(plan.pool, plan.wanted)
    if plan.pool <= world.hi:
        assert after <= world.hi
    if plan.pool >= world.lo:
        assert after >= world.lo
    assert not (plan.start and plan.stop)


@settings(max_examples=300)
@given(worlds())
def test_backoff_holds_every_start(world: World) -> None:
    plan = world.plan()
    if world.backoff.holds(world.now_s):
        assert plan.start == () and plan.reset == ()
        assert plan.held_by_backoff == (plan.pool < plan.wanted)


@settings(max_examples=300)
@given(worlds())
def test_repeated_ticks_on_unchanged_state_emit_nothing(world: World) -> None:
    plan = world.plan()
    again = apply_as_in_flight(world, plan).plan()
    assert again.empty, again
    assert again.pool == plan.pool + len(plan.start) - len(plan.stop)
    assert world.plan() == plan  # deterministic


@settings(max_examples=300)
@given(worlds())
def test_after_the_jobs_finish_no_more_starts_are_needed(world: World) -> None:
    world = replace(world, backoff=Backoff())
    plan = world.plan()
    later = finish_jobs(world, plan).plan()
    assert later.start == ()
    # Stops may remain: units that were not settled before (ours starting, or coming) now are.
    assert not later.stop or later.pool > later.wanted


@settings(max_examples=300)
@given(worlds())
def test_counts_partition_the_listed_units(world: World) -> None:
    plan = world.plan()
    phases = [classify(s, world.in_flight.get(s.instance)) for s in world.states]
    unlisted_starts = sum(1 for n, i in world.in_flight.items()
                          if i is not Intent.STOP and n not in {s.instance for s in world.states})
    c = plan.census
    assert c.running == phases.count(Phase.RUNNING)
    assert c.coming == phases.count(Phase.COMING) + unlisted_starts
    assert c.going == phases.count(Phase.GOING)
    assert c.failing == sum(1 for s in world.states if s.crashed)


# -- worked examples ----------------------------------------------------------------------------

def plan_for(states: Sequence[UnitState], target: int, in_flight: Mapping[int, Intent] | None = None,
             lo: int = 0, hi: int = 10, backoff: Backoff | None = None, now_s: float = 0.0) -> Plan:
    return reconcile(states, target, min_processes=lo, max_processes=hi, in_flight=in_flight or {},
                     backoff=backoff or Backoff(), now_s=now_s)


def test_a_crashed_unit_in_auto_restart_counts_as_coming() -> None:
    states = [unit(1), unit(2), unit(3), unit(4, ActiveState.ACTIVATING, "auto-restart", result="exit-code")]
    plan = plan_for(states, 4)
    assert (plan.census.running, plan.census.coming, plan.census.failing) == (3, 1, 1)
    assert plan.empty


def test_an_operators_rolling_restart_is_not_fought() -> None:
    # systemctl restart 'dramatiq-worker@*' with a slow ExecStop: deactivating with restart jobs
    states = [unit(n, ActiveState.DEACTIVATING, "stop", job="restart") for n in (1, 2, 3)] + [unit(4)]
    plan = plan_for(states, 4)
    assert (plan.census.running, plan.census.coming, plan.census.going) == (1, 3, 0)
    assert plan.empty and plan.census.foreign == (1, 2, 3)
    # even a scale-down stops only the settled unit
    assert plan_for(states, 1).stop == (4,)


def test_a_draining_unit_does_not_block_a_scale_up() -> None:
    states = [unit(1), unit(2), unit(3, ActiveState.DEACTIVATING, "stop-sigterm", job="stop")]
    plan = plan_for(states, 4, in_flight={3: Intent.STOP})
    assert (plan.census.running, plan.census.going) == (2, 1)
    assert plan.start == (4, 5)  # number 3 is still held by the draining worker


def test_a_failed_number_is_reset_and_reused_after_the_backoff() -> None:
    states = [unit(1), unit(2, ActiveState.FAILED, "failed", result="start-limit-hit")]
    held = plan_for(states, 2, backoff=Backoff(1, 10.0), now_s=5.0)
    assert held.empty and held.held_by_backoff
    plan = plan_for(states, 2, backoff=Backoff(1, 10.0), now_s=10.0)
    assert plan.start == (2,) and plan.reset == (2,)


def test_our_start_in_flight_is_coming_even_before_systemd_lists_it() -> None:
    plan = plan_for([unit(1)], 3, in_flight={2: Intent.START})
    assert (plan.census.running, plan.census.coming) == (1, 1)
    assert plan.start == (3,)


def test_backoff_doubles_and_is_capped() -> None:
    b = Backoff()
    delays = []
    for _ in range(9):
        b = b.after_failure(0.0)
        delays.append(b.until_s)
    assert delays == [5, 10, 20, 40, 80, 160, 300, 300, 300]
    assert b.holds(BACKOFF_MAX_S - 1) and not b.holds(BACKOFF_MAX_S)
    assert not Backoff().holds(0.0)


def test_a_passed_check_lifts_the_hold_but_keeps_counting_until_a_quiet_period() -> None:
    b = Backoff().after_failure(0.0).after_failure(5.0)  # held until 15 s
    assert b.after_success(16.0) == b  # a check passed under load proves little: 20 s next time
    assert b.after_success(16.0).after_failure(20.0).until_s == 40.0
    assert b.after_success(5.0 + BACKOFF_MAX_S) == Backoff()

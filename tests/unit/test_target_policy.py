"""Properties of the target-tracking policy: bounds, monotone in demand, max step, no flap."""

from __future__ import annotations

import dataclasses

from hypothesis import given
from hypothesis import strategies as st

from dqagent.core.policies import FLOW_SAMPLES, Observation, TargetPolicy, TargetState
from dqagent.settings.config import parse_settings
from dqagent.settings.workercmd import worker_shape

demand = st.integers(min_value=0, max_value=20_000)
workers = st.integers(min_value=0, max_value=200)


@st.composite
def policies(draw: st.DrawFn) -> TargetPolicy:
    lo = draw(st.integers(0, 20))
    hi = draw(st.integers(max(lo, 1), 200))
    return TargetPolicy(
        min_processes=lo,
        max_processes=hi,
        per_worker=draw(st.floats(0.5, 50)),
        tolerance=draw(st.floats(0, 0.5)),
        max_step=draw(st.integers(1, 20)),
        window_s=draw(st.floats(0, 600)),
        capacity=draw(st.integers(1, 64)),
        idle_spare=draw(st.booleans()),
        band_above=draw(st.booleans()),
    )


@st.composite
def histories(draw: st.DrawFn) -> TargetState:
    """A state left by earlier decisions, as `remember` and `note_flow` build it."""
    state = TargetState()
    for i in range(draw(st.integers(0, 6))):
        state = state.remember(float(i * 10), draw(st.integers(0, 200)), 600)
        state = state.note_flow(float(i * 10), draw(st.sampled_from([0, 0, 3])), draw(st.integers(0, 2000)), 600)
    return state


def obs(t: float, ready: int, in_flight: int, n: int, starting: int = 0) -> Observation:
    return Observation(now_s=t, queue_length=ready + in_flight, ready=ready, in_flight=in_flight,
                       delayed=0, workers=n, starting=min(starting, n))


@given(policies(), histories(), demand, demand, workers)
def test_target_within_bounds(p: TargetPolicy, s: TargetState, ready: int, fl: int, n: int) -> None:
    d, _ = p.decide(obs(100, ready, fl, n), s)
    assert p.min_processes <= d.target <= p.max_processes


@given(policies(), histories(), demand, demand, demand, workers)
def test_monotone_in_demand(p: TargetPolicy, s: TargetState, r1: int, r2: int, fl: int, n: int) -> None:
    small, big = sorted((r1, r2))
    assert p.decide(obs(100, small, fl, n), s)[0].target <= p.decide(obs(100, big, fl, n), s)[0].target


@given(policies(), histories(), demand, demand, workers)
def test_respects_max_step(p: TargetPolicy, s: TargetState, ready: int, fl: int, n: int) -> None:
    d, _ = p.decide(obs(100, ready, fl, n), s)
    if p.min_processes <= n:
        assert d.target <= n + p.max_step


@given(policies(), histories(), demand, demand, workers)
def test_never_below_in_flight_needs_when_shrinking(
    p: TargetPolicy, s: TargetState, ready: int, fl: int, n: int
) -> None:
    d, _ = p.decide(obs(100, ready, fl, n), s)
    if d.target < n:
        assert d.target >= min(-(-fl // p.capacity), p.max_processes)


@given(policies(), demand, demand, workers, st.integers(1, 5))
def test_no_flap_under_constant_demand(p: TargetPolicy, ready: int, fl: int, n: int, tick_s: int) -> None:
    # Given a constant demand, when the decisions are applied tick after tick,
    # then the worker count moves in one direction only and settles.
    state = p.initial_state()
    directions: set[int] = set()
    for i in range(int(p.window_s // tick_s) + p.max_processes + 2):
        d, state = p.decide(obs(float(i * tick_s), ready, fl, n), state)
        if d.target != n:
            directions.add(1 if d.target > n else -1)
        n = d.target
    assert len(directions) <= 1
    assert p.decide(obs(1e9, ready, fl, n), state)[0].target == n


def test_burst_is_answered_in_proportion_not_one_by_one() -> None:
    p = TargetPolicy(1, 10, per_worker=5, tolerance=0.1, max_step=4, window_s=120, capacity=5)
    d, _ = p.decide(obs(0, 5000, 10, 1), p.initial_state())
    assert d.target == 5 and "up by at most 4" in d.reason


def test_starting_workers_count_as_capacity() -> None:
    p = TargetPolicy(1, 10, per_worker=5, tolerance=0.1, max_step=4, window_s=120, capacity=5)
    d, _ = p.decide(obs(0, 30, 10, 8, starting=4), p.initial_state())
    assert d.target == 8 and "4 starting" in d.reason


def test_scale_down_waits_for_the_window() -> None:
    p = TargetPolicy(1, 10, per_worker=5, tolerance=0.1, max_step=4, window_s=120, capacity=5)
    _, s = p.decide(obs(0, 40, 10, 10), p.initial_state())
    held, s = p.decide(obs(60, 0, 5, 10), s)
    assert held.target == 10 and "highest in 120s" in held.reason
    after, _ = p.decide(obs(121, 0, 5, 10), s)
    assert after.target == 1


#: The policy of the hand-written cases: 10 workers at most, 5 per worker, band 10 %, window 120 s.
SMALL = TargetPolicy(1, 10, per_worker=5, tolerance=0.1, max_step=4, window_s=120, capacity=5)


def after_burst(in_flight: int, until_s: int) -> TargetState:
    """A burst that asked for 10 workers, then the pool keeping up with `in_flight` every 5 s."""
    _, s = SMALL.decide(obs(0, 400, 50, 10), SMALL.initial_state())
    for t in range(5, until_s, 5):
        _, s = SMALL.decide(obs(t, 0, in_flight, 10), s)
    return s


def test_a_drained_burst_releases_its_workers_before_the_window_ends() -> None:
    # 30 s of 6 in flight: the hold drops to what that flow needs (6 / (capacity 5 x 1.1) -> 2) + 1 spare.
    d, _ = SMALL.decide(obs(35, 0, 6, 10), after_burst(6, 35))
    assert d.target == 3 and "flow need 2 + 1 spare" in d.reason


def test_a_quiet_read_after_a_burst_keeps_what_the_flow_needs_plus_a_spare() -> None:
    # A steady 8 in flight (-> 2 workers); one quiet read asking for 1 keeps 3 until the window forgets.
    quiet, s = SMALL.decide(obs(60, 0, 2, 10), after_burst(8, 60))
    assert quiet.target == 3 and "flow need 2 + 1 spare" in quiet.reason
    later, _ = SMALL.decide(obs(300, 0, 2, 3), s)
    assert later.target == 1


def test_an_idle_pool_at_min_zero_keeps_its_spare_only_with_idle_spare() -> None:
    # A batch drained, then nothing in flight for most of the window: the typical flow is 0. With
    # nothing outstanding, idle_spare=False lets the pool go to zero; anything outstanding keeps the spare.
    p = TargetPolicy(0, 10, per_worker=5, tolerance=0.1, max_step=4, window_s=120, capacity=5)
    _, s = p.decide(obs(0, 40, 0, 0), p.initial_state())
    for t in range(5, 60, 5):
        _, s = p.decide(obs(t, 0, 0, 1), s)
    kept, _ = p.decide(obs(60, 0, 0, 1), s)
    assert kept.target == 1 and "flow need 0 + 1 spare" in kept.reason
    lean = dataclasses.replace(p, idle_spare=False)
    gone, _ = lean.decide(obs(60, 0, 0, 1), s)
    assert gone.target == 0 and "spare" not in gone.reason
    busy, _ = lean.decide(obs(60, 0, 1, 1), s)
    assert busy.target == 1


def test_a_backlog_that_never_empties_holds_the_whole_window() -> None:
    d, _ = SMALL.decide(obs(30, 1, 5, 10), after_burst(0, 5))
    assert d.target == 10 and "highest in 120s" in d.reason


def test_auto_figures_are_per_unit_processes_x_threads() -> None:
    # --processes 4 --threads 2: a unit runs 8 messages at once and prefetches 4 x (2 x 2) = 16.
    s = parse_settings({"SCALING_POLICY": "target",
                        "DRAMATIQ_COMMAND": "/srv/venv/bin/dramatiq --processes 4 --threads 2 app"})
    p = TargetPolicy.from_settings(s, worker_shape(s.dramatiq_command, cpu_count=2))
    assert (p.per_worker, p.capacity) == (16, 8)
    # 2 units hold 32 outstanding: on target; 24 in flight keep 3 units (24 / 8), never 12 (24 / 2 threads).
    assert p.decide(obs(0, 0, 32, 2), p.initial_state())[0].target == 2
    assert p.decide(obs(0, 0, 24, 4), p.initial_state())[0].target == 3


def test_processes_default_to_the_cpu_count_as_in_dramatiq() -> None:
    # The case: no --processes on an 8-core host holds 8 x the prefetch of one process.
    s = parse_settings({"SCALING_POLICY": "target", "DRAMATIQ_COMMAND": "/srv/venv/bin/dramatiq app"})
    p = TargetPolicy.from_settings(s, worker_shape(s.dramatiq_command, cpu_count=8))
    assert (p.per_worker, p.capacity) == (8 * 16, 8 * 8)
    seed = parse_settings({"SCALING_POLICY": "target"})  # --processes 1 --threads 5
    assert TargetPolicy.from_settings(seed, worker_shape(seed.dramatiq_command, 8)).per_worker == 10


def test_a_long_window_keeps_a_bounded_sample_of_the_flow() -> None:
    # A day-long window read every second: the flow kept for the median stays at FLOW_SAMPLES reads.
    s = TargetState()
    for t in range(20_000):
        s = s.note_flow(float(t), 0, t % 7, 86_400)
    assert len(s.flow) <= FLOW_SAMPLES + 1
    assert s.typical_in_flight(20_000.0, 86_400) is not None

"""The simulator's calibrated models, the drawn pools, scale from zero and adaptive reads."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dqagent.core.policies import FAST_READ_S, Observation, StepPolicy, TargetPolicy, TargetState, read_interval_s
from dqagent.sim.families import FAMILIES, MAX_RATE, draw_case
from dqagent.sim.model import PoolConfig, simulate
from dqagent.sim.robust import CHECKS, run_case
from dqagent.sim.traces import Trace, Workload, compress, generate


def handmade(arrivals_s: tuple[float, ...], services_s: tuple[float, ...], duration_s: float = 60) -> Workload:
    return Workload(Trace("hand", duration_s, ((0, 0),)), 0, arrivals_s, services_s, ())


def test_compress_divides_every_time_and_keeps_the_load() -> None:
    trace = Trace("c", 600, ((0, 2), (300, 6)), bursts=((100, 50),), service_mean_s=2, long_mean_s=60)
    w = generate(trace, 4)
    c = compress(w, 4)
    assert len(c) == len(w) and c.burst_members == w.burst_members
    assert c.arrivals_s == tuple(a / 4 for a in w.arrivals_s)
    assert c.services_s == tuple(s / 4 for s in w.services_s)
    assert c.trace.duration_s == 150 and c.trace.bursts == ((25, 50),)
    assert c.trace.rate_at(75) == pytest.approx(4 * trace.rate_at(300))
    # Offered load (rate x service time) is unchanged
    assert c.trace.rate_at(10) * c.trace.service_mean_s == pytest.approx(trace.rate_at(40) * trace.service_mean_s)
    with pytest.raises(ValueError, match="factor"):
        compress(w, 0)


def test_poll_dispatch_a_message_waits_for_an_idle_consumers_next_poll() -> None:
    # One warm idle worker: Dramatiq's consumer backs off to 0.5..1 s polls, so a message arriving
    # at t=30 waits for the next poll: more than 0 (first fit: 0), at most the 1 s cap.
    w = handmade((30.0,), (1.0,))
    pool = PoolConfig(threads=2, prefetch=4, min_workers=1, max_workers=1, dispatch="poll")
    r = simulate(w, StepPolicy(1, 1, 5, 2.5), pool, tick_s=5)
    assert sorted(r.completed) == [1]
    assert 0 < r.waits_s[0] <= pool.poll_max_s
    first = simulate(w, StepPolicy(1, 1, 5, 2.5), PoolConfig(threads=2, prefetch=4, min_workers=1, max_workers=1),
                     tick_s=5)
    assert first.waits_s == (0.0,)


def test_poll_dispatch_a_consumer_that_just_fetched_polls_again_at_once() -> None:
    # A burst bigger than the prefetch: the busy consumer keeps fetching right behind its acks within
    # its short backoff, so no message waits long behind the two threads beyond the service times.
    w = handmade((10.0,) * 8, (0.5,) * 8)
    pool = PoolConfig(threads=2, prefetch=4, min_workers=1, max_workers=1, dispatch="poll")
    r = simulate(w, StepPolicy(1, 1, 5, 2.5), pool, tick_s=5)
    assert sorted(r.completed) == [1] * 8
    # 4 rounds of 0.5 s on 2 threads: the last starts ~1.5 s after the first, plus at most a few short polls
    assert max(r.waits_s) - min(r.waits_s) < 1.5 + 0.5


@settings(max_examples=10)
@given(st.integers(0, 1000), st.integers(1, 6), st.integers(0, 2))
def test_poll_dispatch_conserves_messages(seed: int, threads: int, lo: int) -> None:
    w = generate(Trace("h", 120, ((0, 3),), bursts=((30, 40),), service_mean_s=1.0), seed)
    pool = PoolConfig(threads=threads, prefetch=2 * threads, startup_delay_s=2, min_workers=lo, max_workers=lo + 3,
                      dispatch="poll")
    r = simulate(w, StepPolicy(lo, lo + 3, 5, 2.5), pool, tick_s=5)
    assert sorted(r.completed) == [1] * len(w) and min(r.waits_s) >= 0


def test_unknown_dispatch_is_refused() -> None:
    with pytest.raises(ValueError, match="poll"):
        simulate(handmade((1.0,), (1.0,)), StepPolicy(1, 1, 5, 2.5), PoolConfig(dispatch="nope"), tick_s=5)


@settings(max_examples=30)
@given(st.integers(1, 50), st.integers(0, 40))
def test_drawn_cases_are_reproducible_and_within_the_stated_ranges(seed: int, k: int) -> None:
    case = draw_case(seed, k)
    assert case == draw_case(seed, k)
    assert case.family in FAMILIES
    assert 1 <= case.threads <= 16 and 1 <= case.processes <= 4 and 1 <= case.startup_s <= 30
    assert 0 <= case.min_workers <= 2 and case.min_workers < case.max_workers <= 200
    assert case.max_workers * case.slots / case.trace.service_mean_s <= MAX_RATE * (1 + 1e-9)
    assert case.trace.service_cv == (3.0 if case.family == "heavy_tail" else 1.0)


def test_a_random_case_gets_one_verdict_per_target() -> None:
    case = draw_case(1, 1)
    small = case.__class__(case.family, case.processes, case.threads, case.startup_s, case.min_workers,
                           case.max_workers, Trace("t", 300, ((0, 1),), service_mean_s=2.0))
    r = run_case(small, 1, "first", {})
    assert [name for name, _ in r.verdicts] == list(CHECKS)
    assert set(r.rows) == {"target", "step", "keda-hpa", "max-warm"}


# -- scale from zero and the adaptive read interval -----------------------------------------------------------


@given(st.integers(1, 200), st.integers(1, 10_000), st.integers(0, 500), st.floats(0.5, 50), st.integers(1, 64))
def test_from_zero_the_first_read_with_work_asks_for_a_worker(hi: int, ready: int, in_flight: int,
                                                             per_worker: float, capacity: int) -> None:
    p = TargetPolicy(0, hi, per_worker, 0.2, 4, 120, capacity)
    o = Observation(now_s=5, queue_length=ready + in_flight, ready=ready, in_flight=in_flight, delayed=0, workers=0)
    assert p.decide(o, TargetState())[0].target >= 1


def test_from_zero_the_simulated_agent_asks_within_one_read() -> None:
    # MIN 0, one message at t=33: with adaptive reads (1 s at zero) the first worker is asked by t=34
    w = handmade((33.0,), (1.0,), duration_s=60)
    pool = PoolConfig(threads=2, prefetch=4, startup_delay_s=1, min_workers=0, max_workers=3)
    r = simulate(w, TargetPolicy(0, 3, 4, 0.2, 4, 120, 2), pool, tick_s=5, adaptive_reads=True)
    assert r.scale_events[0][1] == +1 and 33 <= r.scale_events[0][0] <= 34
    fixed = simulate(w, TargetPolicy(0, 3, 4, 0.2, 4, 120, 2), pool, tick_s=5)
    assert fixed.scale_events[0][0] == 35


def obs(ready: int, in_flight: int, n: int, starting: int = 0) -> Observation:
    return Observation(now_s=0, queue_length=ready + in_flight, ready=ready, in_flight=in_flight, delayed=0,
                       workers=n, starting=starting)


@given(st.floats(0.1, 600), st.integers(0, 1000), st.integers(0, 1000), st.integers(0, 200), st.integers(0, 200),
       st.one_of(st.none(), st.integers(0, 2000)), st.floats(0.1, 3600))
def test_read_interval_never_faster_than_a_second_unless_asked(base: float, ready: int, fl: int, n: int, target: int,
                                                               prev: int | None, slowest: float) -> None:
    got = read_interval_s(base, obs(ready, fl, n), target, prev, slowest)
    assert got >= min(base, FAST_READ_S)
    assert got <= max(2 * base, base)
    if n == 0 or target > n:
        assert got == min(base, FAST_READ_S)


def test_read_interval_cases() -> None:
    assert read_interval_s(5, obs(0, 0, 0), 0, None) == 1  # at zero: a first message is seen within 1 s
    assert read_interval_s(5, obs(10, 5, 2), 3, 15) == 1  # growing
    assert read_interval_s(5, obs(10, 5, 2), 2, 12) == 1  # a backlog rising
    assert read_interval_s(5, obs(0, 5, 2), 2, 3) == 5  # steady, no backlog
    assert read_interval_s(5, obs(0, 0, 2), 2, 0) == 10  # idle
    assert read_interval_s(5, obs(0, 0, 2), 2, 0, slowest_s=6) == 6
    assert read_interval_s(0.5, obs(0, 0, 0), 0, None) == 0.5  # an operator's faster interval is kept
    assert math.isclose(read_interval_s(5, obs(0, 0, 2), 1, 0), 5)  # shrinking: the base


@given(st.integers(1, 200), st.integers(1, 20), st.integers(0, 20_000))
def test_doubling_adds_at_most_the_pool_or_the_step(n: int, step: int, ready: int) -> None:
    p = TargetPolicy(0, 1000, 4, 0.2, step, 120, 2, doubling=True)
    o = Observation(now_s=5, queue_length=ready, ready=ready, in_flight=0, delayed=0, workers=n)
    assert p.decide(o, TargetState())[0].target <= n + max(step, n)


@given(st.integers(1, 100), st.integers(0, 5000), st.integers(0, 5000), st.integers(1, 32))
def test_a_floor_by_prefetch_never_keeps_more_than_the_floor_by_capacity(n: int, ready: int, fl: int,
                                                                        threads: int) -> None:
    o = Observation(now_s=5, queue_length=ready + fl, ready=ready, in_flight=fl, delayed=0, workers=n)
    by_capacity = TargetPolicy(0, 200, 2 * threads, 0.2, 4, 120, threads)
    by_prefetch = TargetPolicy(0, 200, 2 * threads, 0.2, 4, 120, threads, floor_per_unit=2 * threads)
    assert by_prefetch.decide(o, TargetState())[0].target <= by_capacity.decide(o, TargetState())[0].target


def test_measured_start_up_delays_apply_by_time_and_a_stop_costs_its_exit() -> None:
    # MIN 0; one message at t=10 and one at t=100: the worker started at ~10 takes the delay measured
    # from t=0 (3 s), the one started at ~100 the one measured from t=50 (20 s)
    w = handmade((10.0, 100.0), (1.0, 1.0), duration_s=200)
    pool = PoolConfig(threads=1, prefetch=2, min_workers=0, max_workers=1, startup_profile_s=((0, 3.0), (50, 20.0)),
                      stop_delay_s=2.0)
    r = simulate(w, TargetPolicy(0, 1, 2, 0.2, 4, 0, 1), pool, tick_s=1)
    assert r.waits_s == pytest.approx((1 + 3.0, 1 + 20.0), abs=1.0)
    # each stop is paid 2 s after the drain: two lives of start-up + task + the read that stops it + 2 s
    plain = simulate(w, TargetPolicy(0, 1, 2, 0.2, 4, 0, 1), PoolConfig(
        threads=1, prefetch=2, min_workers=0, max_workers=1, startup_profile_s=((0, 3.0), (50, 20.0))), tick_s=1)
    assert r.worker_seconds == pytest.approx(plain.worker_seconds + 2 * 2.0)

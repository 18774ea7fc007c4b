"""The simulator's bookkeeping and the reference policies' documented behaviour."""

from __future__ import annotations

import dataclasses
import math
from collections import Counter
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dqagent.core.policies import Decision, Observation, StepPolicy
from dqagent.sim.bench import contenders, count_flaps, metrics, percentile, run
from dqagent.sim.model import PoolConfig, oracle_worker_seconds, simulate
from dqagent.sim.reference import AwsBacklogPerInstance, CeleryAutoscale, KedaHpa
from dqagent.sim.traces import TRACES, Trace, Workload, generate, load_trace

SMALL = Trace("small", 600, ((0, 2), (300, 6), (600, 1)), bursts=((100, 300),), service_mean_s=1.5,
              long_fraction=0.02, long_mean_s=60)


@pytest.mark.parametrize("name", list(contenders()))
def test_every_arrival_is_completed_exactly_once(name: str) -> None:
    workload = generate(SMALL, seed=3)
    result = run(contenders()[name], workload, PoolConfig())
    assert Counter(result.completed) == Counter({1: len(workload)})
    assert len(result.waits_s) == len(workload) and min(result.waits_s) >= 0


@settings(max_examples=15, deadline=None)
@given(st.integers(0, 10_000), st.integers(1, 8), st.integers(0, 3), st.floats(0, 20))
def test_conservation_for_any_seed_and_pool(seed: int, threads: int, lo: int, startup: float) -> None:
    workload = generate(Trace("h", 200, ((0, 3),), bursts=((50, 80),), service_mean_s=1.0), seed)
    pool = PoolConfig(threads=threads, prefetch=2 * threads, startup_delay_s=startup, min_workers=lo,
                      max_workers=max(lo, 1) + 3)
    result = simulate(workload, StepPolicy(lo, max(lo, 1) + 3, 5, 2.5), pool, tick_s=5)
    assert sorted(result.completed) == [1] * len(workload)


def test_same_seed_same_result_other_seed_other_result() -> None:
    contender = contenders()["target"]
    a = run(contender, generate(SMALL, 7), PoolConfig())
    b = run(contender, generate(SMALL, 7), PoolConfig())
    c = run(contender, generate(SMALL, 8), PoolConfig())
    assert a == b
    assert a.waits_s != c.waits_s


def test_prefetch_is_invisible_to_ready_but_not_to_outstanding() -> None:
    # One worker, 2 threads, prefetch 4; 10 long messages at once: 2 run, 2 wait prefetched, 6 ready.
    workload = generate(Trace("p", 1, ((0, 0),), bursts=((0, 10),), service_mean_s=100, service_cv=0.01), 1)
    seen: list[Observation] = []

    class Spy(StepPolicy):
        def decide(self, obs: Observation, state: None) -> tuple:  # type: ignore[type-arg]
            seen.append(obs)
            return super().decide(obs, state)

    simulate(workload, Spy(1, 1, 5, 2.5), PoolConfig(threads=2, prefetch=4, max_workers=1), tick_s=10)
    assert (seen[1].ready, seen[1].in_flight, seen[1].outstanding) == (6, 4, 10)


def test_graceful_stop_returns_prefetched_messages_and_finishes_running() -> None:
    # A policy that stops the only worker while it holds work: nothing may be lost.
    workload = generate(Trace("g", 30, ((0, 0),), bursts=((0, 40),), service_mean_s=5, service_cv=0.1), 1)

    class Flip(StepPolicy):
        def decide(self, obs: Observation, state: None) -> tuple[Decision, None]:
            return Decision(2 if int(obs.now_s) % 20 < 10 else 1, "flip"), None

    result = simulate(workload, Flip(1, 2, 5, 2.5), PoolConfig(threads=2, prefetch=4, max_workers=2), tick_s=5)
    assert sorted(result.completed) == [1] * 40


def test_oracle_is_the_zero_wait_pool_cost() -> None:
    # Two 10 s messages at t=0 and one at t=5, 2 threads per worker, MIN 1, trace of 20 s:
    # busy threads 2 (0-5 s) -> 1 worker, 3 (5-10 s) -> 2 workers, 1 (10-15 s) -> 1, idle -> MIN 1.
    trace = Trace("o", 20, ((0, 0),), bursts=((0, 2), (5, 1)), service_mean_s=10, service_cv=1e-9)
    workload = generate(trace, 1)
    cost = oracle_worker_seconds(workload, PoolConfig(threads=2, min_workers=1))
    assert cost == pytest.approx(5 * 1 + 5 * 2 + 5 * 1 + 5 * 1, abs=1e-3)
    assert cost >= sum(workload.services_s) / 2


def test_metrics_helpers() -> None:
    assert percentile([5, 1, 4, 2, 3], 0.5) == 3 and percentile([], 0.95) == 0
    events = [(0, 1), (100, -1), (800, 1), (900, 1), (1000, -1)]
    assert count_flaps(events) == 2  # 0->100 and 900->1000; 100->800 is 700 s apart
    m = metrics(run(contenders()["step"], generate(SMALL, 1), PoolConfig()), "small", "step")
    assert m.p50_s <= m.p95_s <= m.p99_s and not math.isnan(m.drain_s)


def test_keda_hpa_behaviour() -> None:
    keda = KedaHpa(1, 100)
    obs = Observation(now_s=0, queue_length=0, ready=500, in_flight=0, delayed=0, workers=2)
    d, state = keda.decide(obs, keda.initial_state())
    assert d.target == 6  # up by max(100 %, 4 pods)
    raw = KedaHpa(1, 100, behavior=False)
    assert raw.decide(obs, raw.initial_state())[0].target == 100
    low = Observation(now_s=60, queue_length=0, ready=0, in_flight=0, delayed=0, workers=6)
    assert keda.decide(low, state)[0].target == 6  # 300 s stabilization holds the earlier 100
    assert keda.decide(Observation(now_s=400, queue_length=0, ready=0, in_flight=0, delayed=0, workers=6),
                       state)[0].target == 1
    within = Observation(now_s=0, queue_length=0, ready=52, in_flight=0, delayed=0, workers=10)
    assert raw.decide(within, raw.initial_state())[0].target == 10  # 10 % tolerance


def test_celery_and_aws_behaviour() -> None:
    celery = CeleryAutoscale(1, 10, threads=5)
    up, last = celery.decide(Observation(0, 0, ready=40, in_flight=0, delayed=0, workers=1), celery.initial_state())
    assert up.target == 8 and last == 0
    assert celery.decide(Observation(10, 0, 0, 0, 0, workers=8), last)[0].target == 8  # keepalive
    assert celery.decide(Observation(40, 0, 0, 12, 0, workers=8), last)[0].target == 7  # never below busy
    aws = AwsBacklogPerInstance(1, 10, threads=5, mean_service_s=2)  # 150 messages per instance
    assert aws.decide(Observation(0, 0, ready=600, in_flight=0, delayed=0, workers=1), -math.inf)[0].target == 4


def test_trace_files_load_and_bad_ones_are_one_line_errors(tmp_path: object) -> None:
    from pathlib import Path

    d = Path(str(tmp_path))
    good = d / "mine.json"
    good.write_text('{"duration_s": 60, "rate_points": [[0, 1]], "bursts": [[10, 5]]}')
    assert load_trace(str(good)).name == "mine"
    bad = d / "bad.json"
    bad.write_text('{"duration_s": 60, "colour": 1}')
    with pytest.raises(ValueError, match="unknown fields"):
        load_trace(str(bad))
    assert set(TRACES) == {"burst", "ramp", "diurnal", "spiky", "idle_burst", "long_jobs"}


def test_simulate_command_prints_metrics_and_writes_a_png(tmp_path: object, capsys: pytest.CaptureFixture[str]) -> None:
    from pathlib import Path

    from dqagent.cli.main import main

    png = Path(str(tmp_path)) / "out.png"
    trace = Path(str(tmp_path)) / "t.json"
    trace.write_text('{"duration_s": 300, "rate_points": [[0, 2]], "bursts": [[60, 200]]}')
    assert main(["simulate", "--trace", str(trace), "--policy", "target", "--plot", str(png)]) == 0
    out = capsys.readouterr().out
    assert "p95 s" in out and any(line.split()[:2] == ["t", "target"] for line in out.splitlines())
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    assert main(["simulate", "--trace", "burst", "--policy", "nope"]) == 2
    assert "unknown 'nope'" in capsys.readouterr().err


def test_random_dispatch_spreads_arrivals_that_first_fit_queues_behind_busy_threads() -> None:
    # Two warm workers of 2 threads, prefetch 4, four long messages at once: first fit puts all four
    # on the first worker (two wait in its prefetch); racing consumers usually spread them.
    workload = generate(Trace("d", 1, ((0, 0),), bursts=((0, 4),), service_mean_s=100, service_cv=0.01), 1)

    def longest_wait(dispatch: str, seed: int) -> float:
        pool = PoolConfig(threads=2, prefetch=4, min_workers=2, max_workers=2, dispatch=dispatch)
        result = simulate(dataclasses.replace(workload, seed=seed), StepPolicy(2, 2, 5, 2.5), pool, tick_s=10,
                          initial_workers=2)
        assert sorted(result.completed) == [1, 1, 1, 1]
        return max(result.waits_s)

    assert all(longest_wait("first", seed) > 90 for seed in range(10))
    assert any(longest_wait("random", seed) == 0 for seed in range(10))


def handmade(arrivals_s: tuple[float, ...], services_s: tuple[float, ...], duration_s: float = 300) -> Workload:
    """Messages with exact arrival and service times (no random draw)."""
    return Workload(Trace("hand", duration_s, ((0, 0),)), 0, arrivals_s, services_s, ())


class Scripted(StepPolicy):
    """Wants `plan(now)` workers and records what it was shown."""

    def __init__(self, plan: Callable[[float], int], lo: int = 0, hi: int = 2) -> None:
        super().__init__(lo, hi, 5, 2.5)
        object.__setattr__(self, "plan", plan)
        object.__setattr__(self, "seen", [])

    def decide(self, obs: Observation, state: None) -> tuple[Decision, None]:
        self.seen.append(obs)  # type: ignore[attr-defined]
        return Decision(self.plan(obs.now_s), "scripted"), None  # type: ignore[attr-defined]


def test_a_stopping_worker_drains_before_it_returns_its_prefetch_and_frees_its_slot() -> None:
    # Given one warm worker (2 threads, prefetch 4) running two 100 s tasks with one more prefetched,
    # stopped at t=10 (MIN 0), one more message arriving at t=50, and a new worker wanted from t=150
    workload = handmade((0, 0, 0, 50), (100, 100, 5, 5))
    policy = Scripted(lambda t: 0 if 10 <= t < 150 else 1)
    result = simulate(workload, policy, PoolConfig(threads=2, prefetch=4, min_workers=0, max_workers=1),
                      tick_s=10, initial_workers=1)
    seen: list[Observation] = policy.seen  # type: ignore[attr-defined]
    at = {round(o.now_s): o for o in seen}
    # Then while its running tasks finish, it is going (not a worker for the policy), it still holds its
    # prefetched message, and its consumer prefetches the newcomer too (Dramatiq stops consumers last)
    assert (at[20].workers, at[20].ready, at[20].in_flight) == (0, 0, 3)
    assert (at[90].workers, at[90].ready, at[90].in_flight) == (0, 0, 4)
    # When the last running task ends (t=100) the held messages go back to the queue, and only then
    assert (at[110].workers, at[110].ready, at[110].in_flight) == (0, 2, 0)
    # It was charged until t=100; the new worker started at t=150 and runs the two 5 s tasks
    assert sorted(result.completed) == [1, 1, 1, 1]
    waits = dict(enumerate(result.waits_s))
    assert waits[2] == pytest.approx(150 + 5 - 0)  # started once the new worker is warm (5 s startup)
    assert result.worker_seconds == pytest.approx(100 + (result.end_s - 150))


def test_a_draining_worker_does_not_hold_back_a_scale_up() -> None:
    # Given two warm workers of one thread (first fit: the first runs a 200 s task and holds a 1 s one,
    # the second runs a 200 s task), the second stopped at t=10, and two wanted again from t=50:
    # the policy sees 1 worker (the draining one is going), so one is started at once
    workload = handmade((0, 0, 0), (200, 1, 200))
    policy = Scripted(lambda t: 1 if 10 <= t < 50 else 2, lo=1, hi=2)
    pool = PoolConfig(threads=1, prefetch=2, min_workers=1, max_workers=2)
    result = simulate(workload, policy, pool, tick_s=10, initial_workers=2)
    seen: list[Observation] = policy.seen  # type: ignore[attr-defined]
    at = {round(o.now_s): o for o in seen}
    assert at[20].workers == 1 and at[60].workers == 2 and at[60].starting == 0
    assert result.scale_events[:2] == ((10, -1), (50, +1))
    # Three processes for a while: two counted, one draining, which is paid for until its task ends
    # (worker 1: 0-300 s, the draining one: 0-200 s, the new one: 50-300 s)
    assert sorted(result.completed) == [1, 1, 1]
    assert result.worker_seconds == pytest.approx(300 + 200 + 250)

"""The fast `poll` dispatch (consumers that found nothing sleep) against `poll-exact`.

`poll-exact` simulates every poll of every consumer (dqagent.sim.model.POLL_EXACT, the reference); `poll`
only simulates the polls that can find something and draws the others' phases when a message races them.
Tracked exactly for SLEEP_EXACT_S, then taken as stationary, so the two are the same model up to what a race
forgets; the comparison is statistical: over the same workloads (seeds), the pooled waits' distributions
must be within a Kolmogorov-Smirnov distance of 0.05 and p50/p95 within 10 % (or 5 ms), the mean worker-seconds
within 2 % (stated in docs/scaling.md).
"""

from __future__ import annotations

import bisect
import dataclasses
import random
import statistics
from collections.abc import Callable, Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dqagent.core.policies import Policy, StepPolicy
from dqagent.sim import pool as simpool
from dqagent.sim.bench import percentile, target_policy
from dqagent.sim.model import POLL_EXACT, PoolConfig, Result, simulate
from dqagent.sim.traces import Trace, Workload, generate


def ks_distance(a: Sequence[float], b: Sequence[float]) -> float:
    """The two-sample Kolmogorov-Smirnov statistic: the largest gap between the empirical CDFs."""
    xa, xb = sorted(a), sorted(b)
    return max(abs(bisect.bisect_right(xa, x) / len(xa) - bisect.bisect_right(xb, x) / len(xb)) for x in xa + xb)


def warm(pool: PoolConfig) -> Policy:
    return StepPolicy(pool.min_workers, pool.max_workers, 5, 2.5)


#: Workload, pool, policy, read interval: a large idle pool (the case the sleepers are for), a busy pool
#: where messages wait in busy consumers' prefetch, and `target` scaling from zero through bursts (starts,
#: drains, requeues, sleepers stopped).
CASES: dict[str, tuple[Trace, PoolConfig, Callable[[PoolConfig], Policy], float]] = {
    "40 idle 1-thread workers": (Trace("idle", 300, ((0, 3),), service_mean_s=0.5),
                                 PoolConfig(threads=1, prefetch=2, min_workers=40, max_workers=40), warm, 5.0),
    "busy 4-thread pool": (Trace("busy", 300, ((0, 9),), service_mean_s=2.0),
                           PoolConfig(threads=4, prefetch=8, min_workers=6, max_workers=6), warm, 5.0),
    "target from zero, bursts": (Trace("bursts", 400, ((0, 0.5),), bursts=((60, 120), (250, 200)), service_mean_s=1.0),
                                 PoolConfig(threads=2, prefetch=4, startup_delay_s=3, min_workers=0, max_workers=12),
                                 target_policy, 2.0),
}
SEEDS = range(1, 7)


def runs(case: str, dispatch: str) -> list[Result]:
    trace, pool, policy, tick_s = CASES[case]
    pool = dataclasses.replace(pool, dispatch=dispatch)
    return [simulate(generate(trace, seed), policy(pool), pool, tick_s) for seed in SEEDS]


@pytest.mark.parametrize("case", list(CASES))
def test_fast_poll_waits_and_cost_match_every_poll_simulated(case: str) -> None:
    fast, exact = runs(case, "poll"), runs(case, POLL_EXACT)
    waits_fast = [w for r in fast for w in r.waits_s]
    waits_exact = [w for r in exact for w in r.waits_s]
    assert len(waits_fast) == len(waits_exact) > 1000
    assert ks_distance(waits_fast, waits_exact) < 0.05
    for q in (0.5, 0.95):
        got, want = percentile(waits_fast, q), percentile(waits_exact, q)
        assert abs(got - want) <= max(0.1 * want, 0.005), (q, got, want)
    cost_fast = statistics.fmean(r.worker_seconds for r in fast)
    cost_exact = statistics.fmean(r.worker_seconds for r in exact)
    assert cost_fast == pytest.approx(cost_exact, rel=0.02)


def test_a_message_on_an_idle_pool_waits_for_the_first_sleepers_poll() -> None:
    # 40 consumers long idle at the cap (poll every 0.5..1 s): the first poll after an arrival comes, on
    # average, after 1 / (40 x 4/3 per s) = 19 ms (the minimum of 40 stationary residuals), never later
    # than the cap (1 s). Both implementations.
    w = Workload(Trace("hand", 2000, ((0, 0),)), 5, tuple(60.0 + 37.3 * i for i in range(50)), (0.1,) * 50, ())
    for dispatch in ("poll", POLL_EXACT):
        pool = PoolConfig(threads=1, prefetch=2, min_workers=40, max_workers=40, dispatch=dispatch)
        waits = [wt for seed in range(4) for wt in simulate(dataclasses.replace(w, seed=seed), warm(pool), pool,
                                                            5.0).waits_s]
        assert max(waits) <= pool.poll_max_s
        assert 0.010 < statistics.fmean(waits) < 0.030, dispatch


@settings(max_examples=20, deadline=None)
@given(st.integers(0, 10_000), st.integers(1, 4), st.integers(0, 2), st.floats(0.5, 10), st.sampled_from((0.0, 2.0)))
def test_fast_poll_completes_every_message_once_and_never_early(seed: int, threads: int, lo: int, startup: float,
                                                               stop_delay: float) -> None:
    workload = generate(Trace("h", 150, ((0, 2),), bursts=((40, 60),), service_mean_s=1.0, long_fraction=0.05,
                              long_mean_s=20), seed)
    pool = PoolConfig(threads=threads, prefetch=2 * threads, startup_delay_s=startup, min_workers=lo,
                      max_workers=lo + 6, dispatch="poll", stop_delay_s=stop_delay)
    result = simulate(workload, target_policy(pool), pool, 2.0, adaptive_reads=True)
    assert sorted(result.completed) == [1] * len(workload)
    assert min(result.waits_s) >= 0


class CountingRandom(random.Random):
    """random.Random that counts its draws (uniform, randrange and shuffle all go through random())."""

    draws = 0

    def random(self) -> float:
        CountingRandom.draws += 1
        return super().random()


def draws_for(dispatch: str, duration_s: float, monkeypatch: pytest.MonkeyPatch) -> int:
    """Random draws to simulate 50 warm idle workers and 20 messages in the first 10 minutes."""
    monkeypatch.setattr(simpool.random, "Random", CountingRandom)
    CountingRandom.draws = 0
    w = Workload(Trace("hand", duration_s, ((0, 0),)), 1, tuple(30.0 * i for i in range(1, 21)), (0.5,) * 20, ())
    pool = PoolConfig(threads=1, prefetch=2, min_workers=50, max_workers=50, dispatch=dispatch)
    result = simulate(w, warm(pool), pool, 60.0)
    assert len(result.waits_s) == 20
    return CountingRandom.draws


def test_fast_poll_cost_does_not_grow_with_idle_consumers_times_time(monkeypatch: pytest.MonkeyPatch) -> None:
    # Every poll draws its backoff: poll-exact draws for each of 50 idle consumers ~1.3 times a second, so
    # twice the simulated time draws about twice as much; the sleepers draw per message and per sleep.
    exact_10, exact_20 = (draws_for(POLL_EXACT, d, monkeypatch) for d in (600, 1200))
    assert exact_10 > 50 * 600 and exact_20 > 1.8 * exact_10
    fast_1h, fast_4h = (draws_for("poll", d, monkeypatch) for d in (3600, 4 * 3600))
    assert fast_4h == fast_1h < exact_10 / 10

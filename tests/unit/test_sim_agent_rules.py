"""The agent's rules on the simulated pool (`dqagent.sim.agenttick`): start checks, stop order and failed
starts as `dqagent.core.reconciler` / `dqagent.systemd.jobtable` have them, and the read phase."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dqagent.core.policies import Decision, Observation, StepPolicy
from dqagent.core.reconciler import BACKOFF_FIRST_S
from dqagent.sim.model import Life, PoolConfig, simulate
from dqagent.sim.traces import Trace, Workload


def handmade(arrivals_s: tuple[float, ...], services_s: tuple[float, ...], duration_s: float = 120) -> Workload:
    return Workload(Trace("hand", duration_s, ((0, 0),)), 0, arrivals_s, services_s, ())


class Scripted(StepPolicy):
    """Wants `plan(now)` workers and records what it was shown."""

    def __init__(self, plan: Callable[[float], int], hi: int = 4) -> None:
        super().__init__(0, hi, 5, 2.5)
        object.__setattr__(self, "plan", plan)
        object.__setattr__(self, "seen", [])

    def decide(self, obs: Observation, state: None) -> tuple[Decision, None]:
        self.seen.append(obs)  # type: ignore[attr-defined]
        return Decision(self.plan(obs.now_s), "scripted"), None  # type: ignore[attr-defined]


def by_start(lives: tuple[Life, ...]) -> list[Life]:
    return sorted(lives, key=lambda life: (life.started_s, life.number))


def test_a_scale_down_stops_a_ready_worker_while_a_slow_start_is_still_in_its_check() -> None:
    # Given one warm worker, a second one wanted from t=10 whose start job takes 30 s (a loaded host) and
    # whose process is ready at t=60, then one wanted again from t=20, and one message at t=25
    workload = handmade((25.0,), (1.0,))
    plan = Scripted(lambda t: 2 if 10 <= t < 20 else 1)
    pool = PoolConfig(threads=1, prefetch=2, startup_delay_s=50, min_workers=1, max_workers=2,
                      start_job_profile_s=((0.0, 30.0),), check_delay_s=1.25)
    agent = simulate(workload, plan, pool, tick_s=1, initial_workers=1)
    # Then the agent can only stop the settled (warm) worker: the new one is in its start check until
    # t=41.25, so the message waits for it to get ready at t=60
    first, second = by_start(agent.lives)
    assert (first.number, first.stopped_s) == (1, 20) and (second.number, second.checked_s) == (2, 41.25)
    assert agent.waits_s == pytest.approx((60 - 25,))
    seen: list[Observation] = plan.seen  # type: ignore[attr-defined]
    at = {round(o.now_s): o for o in seen}
    assert at[30].starting == 1 and at[45].starting == 0  # starting = in its check, not "not ready"


def test_stops_take_the_highest_settled_numbers_and_starts_reuse_the_lowest_free() -> None:
    # Given 1 warm worker, 3 wanted at t=10 (numbers 2 and 3), 1 at t=20, 2 again at t=40
    plan = Scripted(lambda t: 3 if 10 <= t < 20 else 1 if t < 40 else 2)
    pool = PoolConfig(threads=1, prefetch=2, startup_delay_s=2, min_workers=1, max_workers=3, check_delay_s=1,
                      stop_delay_s=3)
    lives = by_start(simulate(handmade((), (), duration_s=60), plan, pool, tick_s=1, initial_workers=1).lives)
    # Then t=20 stops 3 and 2 (highest first; 1 stays), and t=40 starts number 2 again (exited at t=23)
    assert [(life.number, life.started_s, life.stopped_s) for life in lives][:3] == [(1, 0, pytest.approx(float("nan"),
                                                                                                         nan_ok=True)),
                                                                                    (2, 10, 20), (3, 10, 20)]
    assert (lives[3].number, lives[3].started_s) == (2, 40)


def test_a_replayed_failed_start_backs_off_and_reusing_its_number_backs_off_further() -> None:
    # Given 1 warm worker, 2 wanted from t=10 and 3 from t=16; the start at t=10 failed in the real run
    plan = Scripted(lambda t: 1 if t < 10 else 2 if t < 16 else 3)
    pool = PoolConfig(threads=1, prefetch=2, startup_delay_s=1, min_workers=1, max_workers=3, check_delay_s=1,
                      failed_starts_s=((10.4, 0.0),), failure_match_s=1.0)
    result = simulate(handmade((), (), duration_s=60), plan, pool, tick_s=1, initial_workers=1)
    lives = by_start(result.lives)
    # Then it fails at once, never ready; the backoff holds starts for 5 s; the retry reuses the failed
    # number (a reset: a failure, 10 s more), so the third worker waits until t=15 + 10
    assert lives[1].failed and lives[1].started_s == 10 and lives[1].ended_s == 10
    assert lives[1].ready_s != lives[1].ready_s  # NaN: never ready
    assert [(life.number, life.started_s) for life in lives[2:]] == [(2, 10 + BACKOFF_FIRST_S),
                                                                     (3, 10 + BACKOFF_FIRST_S + 2 * BACKOFF_FIRST_S)]
    assert not any(life.failed for life in lives[2:])  # one real failure fails one model start


def test_the_first_read_sets_the_phase_of_every_read() -> None:
    plan = Scripted(lambda t: 1, hi=1)
    simulate(handmade((), (), duration_s=10), plan, PoolConfig(min_workers=1, max_workers=1), tick_s=2,
             first_read_s=0.5)
    seen: list[Observation] = plan.seen  # type: ignore[attr-defined]
    assert [o.now_s for o in seen][:3] == [0.5, 2.5, 4.5]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(1, 4), min_size=3, max_size=12), st.floats(0, 20), st.floats(0.5, 30),
       st.lists(st.floats(0, 100), max_size=3), st.integers(0, 2**16))
def test_the_agent_never_stops_a_worker_in_its_check_nor_reuses_a_live_number(
        plan: list[int], job_s: float, boot_s: float, failures: list[float], seed: int) -> None:
    # Given any scripted sequence of wanted counts (one per 10 s, at least one worker so the work gets done),
    # start jobs and failed starts, and a workload
    arrivals = tuple(sorted((seed * (i + 1) * 7919) % 100_000 / 1000 for i in range(30)))
    workload = handmade(arrivals, tuple(0.5 + (seed >> (i % 16) & 3) for i in range(30)), duration_s=10 * len(plan))
    pool = PoolConfig(threads=2, prefetch=4, startup_delay_s=boot_s, min_workers=0, max_workers=4, check_delay_s=1.25,
                      start_job_profile_s=((0.0, job_s),), stop_delay_s=2,
                      failed_starts_s=tuple((f, 0.0) for f in sorted(failures)))
    result = simulate(workload, Scripted(lambda t: plan[min(int(t // 10), len(plan) - 1)]), pool, tick_s=1,
                      initial_workers=1)
    # Then every message ran exactly once
    assert sorted(result.completed) == [1] * len(arrivals)
    for life in result.lives:
        # no worker was stopped before its start check ended, and a failed one was never ready
        assert not life.stopped_s < life.checked_s
        assert not (life.failed and life.ready_s == life.ready_s)
        # no two workers held the same number at once (a stopped one holds it until its process exits)
        for other in result.lives:
            if other is not life and other.number == life.number:
                assert other.started_s >= life.ended_s or life.started_s >= other.ended_s


def test_a_start_takes_the_measured_delay_of_the_nearest_real_start() -> None:
    # Given start-up delays measured at t=0 (3 s, a quiet host) and at t=50 (20 s, the spike loads it),
    # and model starts at t=20 and t=45 (a moment before the real one at 50)
    pool = PoolConfig(threads=1, prefetch=2, min_workers=0, max_workers=2, startup_profile_s=((0, 3.0), (50, 20.0)))
    plan = Scripted(lambda t: 0 if t < 20 else 1 if t < 45 else 2, hi=2)
    lives = by_start(simulate(handmade((), (), duration_s=90), plan, pool, tick_s=1).lives)
    # Then the one at 20 takes 3 s, and the one at 45 the spike's 20 s, not the quiet 3 s
    assert [(life.started_s, life.ready_s - life.started_s) for life in lives] == [(20, 3.0), (45, 20.0)]


def test_replayed_read_times_are_kept_then_the_intervals_resume() -> None:
    plan = Scripted(lambda t: 1, hi=1)
    simulate(handmade((), (), duration_s=12), plan, PoolConfig(min_workers=1, max_workers=1), tick_s=2,
             read_times_s=(0.3, 1.1, 4.0))
    seen: list[Observation] = plan.seen  # type: ignore[attr-defined]
    assert [o.now_s for o in seen][:5] == [0.3, 1.1, 4.0, 6.0, 8.0]


def test_a_benchmark_pool_stops_the_highest_settled_worker_not_the_newest_one_still_starting() -> None:
    # Given the benchmark's pool (the agent's start check ends as a worker of the typical start-up gets
    # ready: 50 s here), one warm worker, a second one wanted from t=10 to t=20, and 1 wanted after
    pool = PoolConfig(threads=1, prefetch=2, startup_delay_s=50, min_workers=1, max_workers=2)
    lives = by_start(simulate(handmade((), (), duration_s=80), Scripted(lambda t: 2 if 10 <= t < 20 else 1),
                              pool, tick_s=1, initial_workers=1).lives)
    # Then at t=20 the agent stops the only settled worker (number 1): the new one is still in its check
    # (a newest-first order would stop the one still starting and keep the warm one)
    first, second = lives
    assert (first.number, first.stopped_s) == (1, 20)
    assert second.number == 2 and second.stopped_s != second.stopped_s  # NaN: never stopped


def test_idle_adaptive_reads_are_at_most_check_interval_apart() -> None:
    # Given adaptive reads around 100 s (idle: twice that) and CHECK_INTERVAL=150
    plan = Scripted(lambda t: 1, hi=1)
    pool = PoolConfig(min_workers=1, max_workers=1, check_interval_s=150)
    simulate(handmade((), (), duration_s=1000), plan, pool, tick_s=100, adaptive_reads=True)
    seen: list[Observation] = plan.seen  # type: ignore[attr-defined]
    # Then an idle pool is read every 150 s, as the agent reads it (`read_interval_s`'s slowest bound)
    assert [o.now_s for o in seen][:4] == [0, 150, 300, 450]

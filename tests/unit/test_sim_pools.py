"""The simulated host with pools (dqagent.sim.hostpools): one pool without a budget is the single-pool simulator
exactly; two pools bursting on HOST_MAX_PROCESSES=5 (dqagent.sim.poolsbench) share it by priority."""

from __future__ import annotations

from dataclasses import replace

import pytest

from dqagent.sim.bench import DEFAULT_POOL, percentile, target_policy
from dqagent.sim.hostpools import HostResult, PoolSpec, simulate_host
from dqagent.sim.model import simulate
from dqagent.sim.poolsbench import BUDGET, BURST_S, main, pools, scenario
from dqagent.sim.traces import TRACES, generate


@pytest.mark.parametrize(("trace", "dispatch", "adaptive"),
                         [("burst", "poll", True), ("spiky", "first", False), ("idle_burst", "random", True)])
def test_one_pool_without_a_budget_is_the_single_pool_simulator_exactly(trace: str, dispatch: str,
                                                                         adaptive: bool) -> None:
    workload, pool = generate(TRACES[trace], 1), replace(DEFAULT_POOL, dispatch=dispatch)
    alone = simulate(workload, target_policy(pool), pool, 5.0, adaptive_reads=adaptive)
    host = simulate_host([PoolSpec("default", workload, target_policy(pool), pool)], None, 5.0,
                         adaptive_reads=adaptive)
    assert host.pools == {"default": alone}
    assert host.max_units() >= max(s.workers for s in alone.samples)


@pytest.fixture(scope="module")
def shared() -> HostResult:
    return scenario()


def units(result: HostResult, pool: str, start_s: float, end_s: float) -> list[int]:
    return [s.of(pool) for s in result.samples if start_s <= s.t_s < end_s]


def burst_p95(result: HostResult, pool: str) -> float:
    arrivals = {p.name: p.workload.arrivals_s for p in pools()}[pool]
    return percentile([w for w, t in zip(result.pools[pool].waits_s, arrivals, strict=False)
                       if BURST_S[0] <= t < BURST_S[1]], 0.95)


def test_the_pools_never_hold_more_than_the_budget_nor_less_than_their_min(shared: HostResult) -> None:
    assert shared.max_units() == BUDGET  # the budget is used in full...
    assert all(s.total <= BUDGET for s in shared.samples)  # ...and never exceeded, stopping units included
    assert all(n >= 1 for s in shared.samples for _, n in s.units)  # each pool's MIN
    assert scenario(budget=None).max_units() == 10  # without the budget the same pools take 10


def test_the_higher_priority_burst_takes_the_room_from_the_lower_pool_through_its_stops(shared: HostResult) -> None:
    before = BURST_S[0]
    assert max(units(shared, "urgent", 0, before)) == 1 and max(units(shared, "batch", 0, before)) >= 3
    # within 20 s of the burst's start urgent has all but batch's MIN, and batch is down to its MIN
    assert units(shared, "urgent", before + 20, before + 25) == [4]
    assert units(shared, "batch", before + 20, before + 25) == [1]
    # urgent waits about as long as with no budget at all; batch pays for it
    free, even = scenario(budget=None), scenario(urgent_priority=0)
    assert burst_p95(shared, "urgent") < 2 * burst_p95(free, "urgent") + 5
    assert burst_p95(shared, "batch") > 10 * burst_p95(free, "batch")
    # with equal priorities the room is split instead, and urgent waits far longer
    assert max(units(even, "urgent", before, BURST_S[1])) < 4
    assert burst_p95(even, "urgent") > 10 * burst_p95(shared, "urgent")


def test_the_lower_pool_grows_back_when_the_burst_ends(shared: HostResult) -> None:
    after = BURST_S[1]
    assert max(units(shared, "batch", after, after + 180)) == 4
    quiet = units(shared, "urgent", after + 180, 1500)
    assert quiet and set(quiet) == {1}  # urgent back at its MIN: sampled, not vacuously


def test_dev_pools_prints_the_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].split()[:3] == ["HOST_MAX_PROCESSES", "priorities", "pool"] and len(lines) == 9


def test_one_pool_with_predictive_on_is_the_single_pool_simulator_exactly() -> None:
    """The host step passes each pool's forecast to its step (PoolInput.forecast): one code path with the
    single-pool simulator, whose forecaster pre-warms (the result differs from PREDICTIVE=off)."""
    from dqagent.core.prediction import Mode
    from dqagent.sim.periodic import draw_periodic

    case = draw_periodic(1, 0)  # regular bursts
    workload = generate(case.trace, 1)
    policy = target_policy(case.pool)
    alone = simulate(workload, policy, case.pool, 5.0, adaptive_reads=True, predictive=Mode.ON)
    host = simulate_host([PoolSpec("default", workload, policy, case.pool, predictive=Mode.ON)], None, 5.0,
                         adaptive_reads=True)
    assert host.pools == {"default": alone}
    assert alone != simulate(workload, policy, case.pool, 5.0, adaptive_reads=True)

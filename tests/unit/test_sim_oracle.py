"""The simulator's perfect forecast (dqagent.sim.oracle), the cost bound (dqagent.sim.bound) and the verdicts
(dqagent.sim.verdict) of `python -m dqagent.sim.periodic --oracle`."""

from __future__ import annotations

import math

import pytest

from dqagent.core.forecast import Kind
from dqagent.core.prediction import Mode
from dqagent.sim.agenttick import EPOCH_S
from dqagent.sim.bench import Metrics, target_policy
from dqagent.sim.bound import cost_bound, integrate, lives_between
from dqagent.sim.model import PoolConfig, Result, simulate
from dqagent.sim.oracle import Oracle
from dqagent.sim.periodic import Oracular, Row, main
from dqagent.sim.pool import Life
from dqagent.sim.traces import Trace, Workload, generate
from dqagent.sim.verdict import blame, category

POOL = PoolConfig(threads=4, prefetch=8, startup_delay_s=10.0, min_workers=0, max_workers=6, dispatch="poll")
#: A clean rhythm: 40 messages every 120 s from 40 s on, for an hour.
BURSTS = Trace("bursts", 3600.0, ((0, 0.0),), bursts=tuple((40.0 + 120.0 * k, 40) for k in range(30)),
               service_mean_s=2.0)


def up_at(result: Result, t: float, running: bool = True) -> int:
    """Workers running (past their start-up; else started) and not stopping at `t`."""
    def stopped(life: Life) -> float:
        return math.inf if math.isnan(life.stopped_s) else life.stopped_s
    return sum(1 for life in result.lives
               if (life.ready_s if running else life.started_s) <= t < stopped(life) and not life.failed)


def test_the_oracle_prewarms_every_burst_from_the_first() -> None:
    """Fed the true future through PREDICTIVE=on's code path, the floor has started the burst's workers (40 / 8
    per worker = 5) before each burst arrives, the first one included, and has them running at the first; the
    learning forecaster has not for the first bursts, nor the reactive policy for any. (Not
    always running in time: the floor watches a lead + DEMAND_POLL_INTERVAL ahead, but idle reads come up to
    10 s apart, so a start can come up to 5 s late; docs/scaling.md.)"""
    workload = generate(BURSTS, 1)
    policy = target_policy(POOL)
    assert policy.per_worker == 8
    oracle = simulate(workload, policy, POOL, 5.0, adaptive_reads=True, predictive=Mode.ON,
                      forecaster=Oracle(workload))
    learnt = simulate(workload, policy, POOL, 5.0, adaptive_reads=True, predictive=Mode.ON)
    reactive = simulate(workload, policy, POOL, 5.0, adaptive_reads=True)
    times = [t for t, _ in BURSTS.bursts]
    assert [up_at(oracle, t - 0.01, running=False) for t in times] == [5] * len(times)
    assert up_at(oracle, times[0]) == 5
    assert all(up_at(learnt, t - 0.01, running=False) < 5 for t in times[:2])
    assert all(up_at(reactive, t - 0.01, running=False) < 5 for t in times)
    assert max(oracle.waits_s) < max(reactive.waits_s)


def test_a_rise_is_the_busiest_bucket_still_to_come() -> None:
    """RISE: the most arrivals after `from` in one 10-s bucket of the wall clock; what has arrived is not
    counted again."""
    trace = Trace("b", 100.0, ((0, 0.0),), bursts=((20.0, 7), (45.0, 3), (47.0, 4)))
    oracle = Oracle(generate(trace, 1))
    assert oracle.kind() is Kind.RISE and oracle.error_recent() == 0.0

    def rise(a: float, b: float) -> float:
        outlook = oracle.outlook(EPOCH_S + a, EPOCH_S + b)
        assert outlook is not None and outlook.kind is Kind.RISE
        return outlook.value

    assert rise(0, 19.9) == 0
    assert rise(0, 20) == 7
    assert rise(20, 60) == 7  # 45 and 47 s fall in one bucket of the wall clock
    assert rise(20, 46) == 3
    assert rise(45, 60) == 4


def test_a_level_is_the_work_a_pool_keeping_up_holds() -> None:
    """LEVEL (a flow): the highest count over the window of a pool starting each message on arrival."""
    trace = Trace("flow", 100.0, ((0, 1.0),))
    workload = Workload(trace, 1, (10.0, 11.0, 12.0, 30.0), (5.0, 5.0, 0.5, 1.0), ())
    oracle = Oracle(workload)
    assert oracle.kind() is Kind.LEVEL

    def level(a: float, b: float) -> float:
        outlook = oracle.outlook(EPOCH_S + a, EPOCH_S + b)
        assert outlook is not None
        return outlook.value

    assert level(0, 9) == 0
    assert level(0, 20) == 3  # at 12 s: three in service
    assert level(13, 20) == 2  # the third ended at 12.5 s
    assert level(16, 29) == 0
    assert level(16, 30) == 1


def test_lives_between_and_integrate_split_worker_seconds_by_interval() -> None:
    lives = [Life(1, 5.0, 6.0, 6.0, 25.0, 25.0, False), Life(2, 15.0, 16.0, 16.0, math.nan, math.nan, False)]
    assert lives_between(lives, [0.0, 10.0, 20.0, 40.0]) == [5.0, 15.0, 25.0]
    assert integrate([(0.0, 1), (10.0, 3), (15.0, 0)], [0.0, 5.0, 20.0]) == [5.0, 5.0 + 15.0]


def test_the_bound_holds_the_gaps_the_flaps_cannot_pay_for() -> None:
    """30 bursts 120 s apart (29 short gaps) of 5 workers each: with F flaps allowed, 29 - F gaps are held at
    5 workers (600 worker-s each, less the zero-wait pool's cost in it); the bound falls as F rises, and with
    F >= 29 it is the zero-wait pool plus a start-up per gap."""
    workload = generate(BURSTS, 1)
    target = simulate(workload, target_policy(POOL), POOL, 5.0, adaptive_reads=True)
    bounds = {f: cost_bound(workload, POOL, 8.0, f, target) for f in (0, 10, 29, 40)}
    assert all(b is not None for b in bounds.values())
    b0, b10, b29, b40 = (bounds[f] for f in (0, 10, 29, 40))
    assert b0 is not None and b10 is not None and b29 is not None and b40 is not None
    assert (b0.short_gaps, b0.held, b10.held, b29.held) == (29, 29, 19, 0)
    assert b0.lower_s > b10.lower_s > b29.lower_s == b40.lower_s
    assert b29.lower_s == pytest.approx(b29.zero_wait_s + 29 * 1 * POOL.startup_delay_s)
    # Holding all 29 gaps at 5 workers costs at least 29 x 5 x 120 s.
    assert b0.lower_s >= 29 * 5 * 120.0
    assert b0.estimate_s >= 29 * 5 * 120.0 and b29.estimate_s == target.worker_seconds
    assert cost_bound(generate(Trace("flow", 100.0, ((0, 1.0),)), 1), POOL, 8.0, 0, target) is None


def metric(p95_s: float, flaps: int, worker_s: float) -> Metrics:
    return Metrics("x", "t", 0.0, p95_s, p95_s, 0, 0.0, worker_s, 0, flaps)


def test_each_miss_is_the_goals_the_policy_or_the_forecaster() -> None:
    """p95 missed by the forecaster but met by the oracle: the forecaster's; met by neither but by MAX warm: the
    policy's; met by not even MAX warm: the goals'. Flaps and cost over the bound: the goals'."""
    target, hpa = metric(10.0, 50, 1000.0), metric(20.0, 10, 3000.0)
    oracle_run = metric(0.0, 30, 1050.0)

    def row(pred_p95: float, oracle_p95: float, warm_p95: float, bound_s: float) -> Row:
        from dqagent.sim.bound import CostBound
        bound = CostBound(10, 40, 30, 100.0, bound_s, bound_s)
        return Row("c", True, target, metric(0.0, 50, 1050.0), hpa, (10.0, pred_p95, 20.0),
                   Oracular(oracle_run, oracle_p95, warm_p95, bound))

    assert blame(row(9.0, 4.0, 2.0, 500.0)) == {"p95": "forecaster", "flaps": "policy"}
    assert category(row(9.0, 4.0, 2.0, 500.0)) == "policy"
    assert blame(row(9.0, 7.0, 2.0, 500.0))["p95"] == "policy"
    assert blame(row(9.0, 7.0, 6.0, 2000.0)) == {"p95": "goals", "flaps": "goals"}
    assert category(row(9.0, 7.0, 6.0, 2000.0)) == "unattainable"
    # p95 the policy's, but the bound rules out the three goals together: unattainable.
    assert blame(row(9.0, 7.0, 2.0, 1200.0)) == {"p95": "policy", "flaps": "goals"}
    assert category(row(9.0, 7.0, 2.0, 1200.0)) == "unattainable"
    assert category(row(9.0, 4.0, 2.0, 1090.0)) == "policy"


def test_the_periodic_table_prints_the_oracle_verdicts(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--periodic", "1", "--drawn", "0", "--oracle"]) == 0
    out = capsys.readouterr().out
    assert "MAX warm" in out and "bursts 5t up 5s 0..6 svc 1.7s every 600s x 35" in out
    assert "Periodic cases: met 1 of 1, unattainable 0 of 1, policy 0 of 1, forecaster 0 of 1" in out

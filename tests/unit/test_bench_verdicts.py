"""The benchmark's verdicts: a target is PASS only when met; TIE and BOUND say why it is not."""

from __future__ import annotations

import dataclasses

import pytest

from dqagent.sim.bench import BOUND, FAIL, PASS, TIE, Metrics, check_targets, contenders, run, variant
from dqagent.sim.benchcli import main
from dqagent.sim.model import PoolConfig
from dqagent.sim.traces import TRACES, Trace, generate

GOOD = Metrics("target", "", p50_s=1, p95_s=2, p99_s=3, max_backlog=10, drain_s=1, worker_seconds=100,
               scale_events=2, flaps=0)


def table(**overrides: Metrics) -> dict[tuple[str, str], Metrics]:
    """Every trace with target clearly better than everyone; `overrides` replaces (trace_policy) rows."""
    rows: dict[tuple[str, str], Metrics] = {}
    for trace in TRACES:
        rows[(trace, "target")] = dataclasses.replace(GOOD, trace=trace)
        rows[(trace, "step")] = dataclasses.replace(GOOD, trace=trace, policy="step", p95_s=100)
        rows[(trace, "max-warm")] = dataclasses.replace(GOOD, trace=trace, policy="max-warm", p95_s=1)
        rows[(trace, "keda-hpa")] = dataclasses.replace(GOOD, trace=trace, policy="keda-hpa", p95_s=5,
                                                        flaps=3, worker_seconds=100)
    for key, row in overrides.items():
        trace, policy = key.split("__")
        rows[(trace, policy)] = row
    return rows


ORACLE = {trace: 90.0 for trace in TRACES}


def verdicts(rows: dict[tuple[str, str], Metrics]) -> dict[str, str]:
    return {text: verdict for text, verdict in check_targets(rows, ORACLE)}


def test_all_met_is_all_pass() -> None:
    assert set(verdicts(table()).values()) == {PASS}
    assert len(verdicts(table())) == 2 + 4 * len(TRACES)


def test_ten_times_missed_is_bound_only_when_max_warm_workers_could_not_do_it() -> None:
    slow = dataclasses.replace(GOOD, trace="burst", p95_s=30)  # step 100 s: 3.3x, needs <= 10 s
    bound = verdicts(table(burst__target=slow,
                           **{"burst__max-warm": dataclasses.replace(GOOD, policy="max-warm", p95_s=20)}))
    assert [v for t, v in bound.items() if t.startswith("burst: target p95 30.0s vs step")] == [BOUND]
    fail = verdicts(table(burst__target=slow))  # max-warm at 1 s: 10x was possible
    assert [v for t, v in fail.items() if t.startswith("burst: target p95 30.0s vs step")] == [FAIL]


def test_equal_flaps_are_a_tie_only_for_one_burst() -> None:
    one = {"keda-hpa": dataclasses.replace(GOOD, policy="keda-hpa", p95_s=5, flaps=1),
           "target": dataclasses.replace(GOOD, flaps=1)}
    got = verdicts(table(**{f"{tr}__{p}": dataclasses.replace(m, trace=tr)
                            for tr in ("burst", "spiky") for p, m in one.items()}))
    assert got["burst: target flaps 1 < keda-hpa 1: one burst, one up-then-down"] == TIE
    assert got["spiky: target flaps 1 < keda-hpa 1"] == FAIL


@pytest.mark.parametrize(("cost", "expected"), [(110.0, PASS), (110.5, FAIL)])
def test_cost_against_keda_allows_ten_percent(cost: float, expected: str) -> None:
    got = verdicts(table(diurnal__target=dataclasses.replace(GOOD, trace="diurnal", worker_seconds=cost)))
    assert [v for t, v in got.items() if t.startswith("diurnal: target worker-s") and "keda" in t] == [expected]


def test_max_warm_keeps_every_worker_from_the_start() -> None:
    result = run(contenders()["max-warm"], generate(Trace("b", 300, ((0, 1),), bursts=((10, 200),)), 1),
                 PoolConfig(max_workers=4))
    assert result.scale_events == ()
    assert {s.workers for s in result.samples} == {4}
    assert result.waits_s[0] == 0


def test_sweep_prints_one_row_per_setting_pair(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--sweep", "burst"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if "/4" in line]
    assert len(rows) == 4 * 5


def test_a_service_time_variant_keeps_the_offered_load() -> None:
    trace = TRACES["ramp"]
    slow = variant(trace, service_mean_s=4.0, service_cv=2.0)
    assert (slow.service_mean_s, slow.service_cv) == (4.0, 2.0)
    for (t0, r0), (t1, r1) in zip(trace.rate_points, slow.rate_points, strict=True):
        assert t0 == t1 and r0 * trace.service_mean_s == pytest.approx(r1 * slow.service_mean_s)
    assert variant(trace, None, None) == trace


def test_a_bad_target_setting_is_one_line_and_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--traces", "burst", "--set", "SCALE_DOWN_WINDOW=-1"])
    assert exit_info.value.code == 2
    assert "SCALE_DOWN_WINDOW" in capsys.readouterr().err.splitlines()[-1]


def test_max_warm_is_no_bound_on_wait_where_warm_workers_hoard_behind_long_jobs() -> None:
    slow = dataclasses.replace(GOOD, trace="burst", p95_s=30)
    rows = table(burst__target=slow, **{"burst__max-warm": dataclasses.replace(GOOD, policy="max-warm", p95_s=20)})
    got = {t: v for t, v in check_targets(rows, ORACLE, warm_bounds_wait=False)}
    assert [v for t, v in got.items() if t.startswith("burst: target p95 30.0s vs step")] == [FAIL]

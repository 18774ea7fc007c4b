"""The oldest waiting message's age: the probe's arithmetic, MAX_QUEUE_AGE in `target` (properties), its
setting, and what the agent logs and reports (with the fakes; the real probe and agent have bench tests in
tests/integration/test_oldest_age.py and test_age_scaling.py)."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dqagent.agent.lifecycle import Agent
from dqagent.broker.redis import oldest_ages
from dqagent.core.demand import Demand, QueueDemand
from dqagent.core.policies import Decision, Observation, TargetPolicy, TargetState, age_floor
from dqagent.core.step import format_age
from dqagent.errors import ConfigError
from dqagent.report.reporter import Reporter
from dqagent.settings.config import MAX_QUEUE_AGE_LIMIT_S, parse_settings
from tests.unit.fakes import FakeDemandProbe, FakeUnits, RecordingNotifier
from tests.unit.logged import events
from tests.unit.test_target_policy import histories, policies

ages = st.one_of(st.none(), st.floats(0, 10**6))
limits = st.floats(0.5, 3600)


def obs(ready: int, in_flight: int, n: int, age: float | None, starting: int = 0, t: float = 100) -> Observation:
    return Observation(now_s=t, queue_length=ready + in_flight, ready=ready, in_flight=in_flight, delayed=0,
                       workers=n, starting=min(starting, n), oldest_age_s=age)


# -- the probe's arithmetic ------------------------------------------------------------------------


@given(st.lists(st.one_of(st.none(), st.just(-1), st.integers(0, 2 * 10**12)), max_size=6),
       st.floats(10**12, 2 * 10**12))
def test_ages_are_never_negative_and_clamps_and_unreadables_are_counted(stamps: list[int | None],
                                                                       now_ms: float) -> None:
    got = oldest_ages(stamps, now_ms)
    assert len(got.ages_s) == len(stamps)
    assert all(a is None or a >= 0 for a in got.ages_s)
    assert got.skewed == sum(1 for ts in stamps if ts is not None and ts != -1 and ts > now_ms)
    assert got.unreadable == stamps.count(-1)
    for ts, age in zip(stamps, got.ages_s, strict=True):
        if ts is None or ts == -1:
            assert age is None
        else:
            assert age == max(0.0, (now_ms - ts) / 1000)


def test_demand_age_is_the_oldest_queues_and_none_when_nothing_waits() -> None:
    def q(name: str, age: float | None) -> QueueDemand:
        return QueueDemand(name, ready=0 if age is None else 1, outstanding=1, delayed=0, dead=0, orphaned=0,
                           oldest_age_s=age)

    assert Demand((q("a", 3.0), q("b", None), q("c", 7.5))).oldest_age_s == 7.5
    assert Demand((q("a", None),)).oldest_age_s is None
    assert Demand(()).oldest_age_s is None
    assert (format_age(None), format_age(0.04), format_age(61.25)) == ("", "0.0", "61.2")


# -- MAX_QUEUE_AGE: age_floor alone ----------------------------------------------------------------


@given(st.integers(0, 200), st.integers(0, 200), st.integers(0, 300), ages, limits, st.integers(1, 20),
       st.integers(1, 300))
def test_age_floor_bounds(base: int, n: int, starting: int, age: float | None, limit: float, step: int,
                          hi: int) -> None:
    base = min(base, hi)
    got = age_floor(Decision(base, "count"), obs(0, 0, n, age, starting), limit, step, hi)
    assert got.target >= base  # only ever raises the decision it is composed after
    assert got.target <= max(base, hi)  # never above MAX
    if age is None or age <= limit:
        assert got == Decision(base, "count")
    else:
        assert got.target >= min(hi, n)  # never down while exceeded
        assert got.target <= max(base, n + step)  # at most one SCALE_UP_MAX_STEP
        if starting == 0:
            assert got.target >= min(hi, n + 1)  # at least one step


@given(st.integers(0, 100), st.integers(0, 100), ages, ages, limits, st.integers(1, 20))
def test_age_floor_is_monotone_in_age(n: int, starting: int, a1: float | None, a2: float | None, limit: float,
                                      step: int) -> None:
    lo, hi = sorted((a1 or 0.0, a2 or 0.0))
    base = Decision(n, "count")
    assert (age_floor(base, obs(0, 0, n, lo, starting), limit, step, 1000).target
            <= age_floor(base, obs(0, 0, n, hi, starting), limit, step, 1000).target)


@pytest.mark.parametrize(("age", "added"), [(60.0, 0), (61.0, 1), (120.0, 1), (121.0, 2), (300.0, 4), (10**5, 4)])
def test_one_step_per_whole_limit_past_it_up_to_the_max_step(age: float, added: int) -> None:
    got = age_floor(Decision(3, "count"), obs(5, 10, 3, age), 60, 4, 100)
    assert got.target == 3 + added
    assert ("MAX_QUEUE_AGE 60s: up" in got.reason) == bool(added)


def test_a_pool_above_a_lowered_max_goes_down_to_max_only() -> None:
    got = age_floor(Decision(2, "count; clamped to [1, 4]"), obs(5, 10, 6, 100), 60, 4, 4)
    assert got.target == 4 and got.reason.endswith(": down to MAX_PROCESSES=4 only")


def test_starting_workers_are_the_steps_already_taken() -> None:
    # 1 worker settled + 1 starting, age 1.5 x the limit (one step): the starting one is that step
    assert age_floor(Decision(1, "count"), obs(2, 10, 2, 90, starting=1), 60, 4, 10).target == 2
    # 2.5 x the limit (two steps): one more
    assert age_floor(Decision(1, "count"), obs(2, 10, 2, 150, starting=1), 60, 4, 10).target == 3


# -- MAX_QUEUE_AGE inside `target` -----------------------------------------------------------------


def with_age(p: TargetPolicy, limit: float | None) -> TargetPolicy:
    return dataclasses.replace(p, max_queue_age_s=limit)


@given(policies(), histories(), st.integers(0, 20_000), st.integers(0, 20_000), st.integers(0, 200), ages,
       limits)
def test_target_with_an_age_limit(p: TargetPolicy, s: TargetState, ready: int, fl: int, n: int,
                                  age: float | None, limit: float) -> None:
    off, _ = with_age(p, None).decide(obs(ready, fl, n, age), s)
    on, _ = with_age(p, limit).decide(obs(ready, fl, n, age), s)
    assert p.min_processes <= on.target <= p.max_processes
    if age is None or age <= limit:
        assert on == off  # under the limit (or nothing waits) the count rule alone decides
    else:
        assert on.target >= off.target
        assert on.target >= min(p.max_processes, n)  # never scales down while exceeded
        if n >= p.min_processes:
            assert on.target >= min(p.max_processes, n + 1)
            assert on.target <= n + p.max_step


def test_inside_the_tolerance_band_an_old_message_scales_up() -> None:
    # 1 worker of 5 threads (per worker 10), outstanding 11: within 20 % of target, so the count rule keeps 1
    p = TargetPolicy(1, 10, per_worker=10, tolerance=0.2, max_step=4, window_s=120, capacity=5)
    young = obs(1, 10, 1, age=5)
    assert p.decide(young, p.initial_state())[0].target == 1
    aged = with_age(p, 30)
    assert aged.decide(young, aged.initial_state())[0].target == 1
    # When the message at the head of the list has waited 40 s (MAX_QUEUE_AGE=30)
    d, state = aged.decide(obs(1, 10, 1, age=40), aged.initial_state())
    # Then one more worker, and the reason says why
    assert d.target == 2 and "oldest message waited 40s > MAX_QUEUE_AGE 30s: up 1" in d.reason
    # And once the age is back under the limit the window holds the raised count
    later, _ = aged.decide(obs(0, 10, 2, age=None, t=110), state)
    assert later.target == 2


def test_an_old_message_blocks_a_scale_down() -> None:
    p = TargetPolicy(1, 10, per_worker=10, tolerance=0.2, max_step=4, window_s=0, capacity=5, max_queue_age_s=30)
    # 4 workers, outstanding 3: the count rule wants 1
    assert p.decide(obs(1, 2, 4, age=10), p.initial_state())[0].target == 1
    held, _ = p.decide(obs(1, 2, 4, age=35, starting=4), p.initial_state())
    assert held.target == 4 and "no scale-down, 4 starting" in held.reason


# -- the setting -----------------------------------------------------------------------------------


def test_max_queue_age_setting() -> None:
    assert parse_settings({}).max_queue_age_s is None
    assert parse_settings({"SCALING_POLICY": "target", "MAX_QUEUE_AGE": " "}).max_queue_age_s is None
    assert parse_settings({"SCALING_POLICY": "target", "MAX_QUEUE_AGE": "90"}).max_queue_age_s == 90
    for bad in ("0", "-5", "abc", "nan", "inf", str(MAX_QUEUE_AGE_LIMIT_S + 1)):
        with pytest.raises(ConfigError) as err:
            parse_settings({"SCALING_POLICY": "target", "MAX_QUEUE_AGE": bad})
        assert str(err.value).startswith("invalid MAX_QUEUE_AGE=") and "\n" not in str(err.value)
        assert "(0, 604800]" in str(err.value)
    with pytest.raises(ConfigError, match="only SCALING_POLICY=target scales on age"):
        parse_settings({"MAX_QUEUE_AGE": "60"})
    s = parse_settings({"SCALING_POLICY": "target", "MAX_QUEUE_AGE": "45"})
    from dqagent.settings.workercmd import worker_shape

    assert TargetPolicy.from_settings(s, worker_shape(s.dramatiq_command, 4)).max_queue_age_s == 45


# -- what the agent logs and reports ---------------------------------------------------------------


def test_the_decision_line_and_status_carry_the_age_and_the_policy_acts_on_it(
        caplog: pytest.LogCaptureFixture) -> None:
    s = parse_settings({"GUARD": "off", "SCALING_POLICY": "target", "TARGET_PER_WORKER": "10", "MAX_QUEUE_AGE": "30",
                        "MIN_PROCESSES": "1", "MAX_PROCESSES": "5", "PROCESS_STARTUP_DELAY": "0",
                        "DRAMATIQ_COMMAND": "python -m dramatiq -p 1 -t 5 app", "DRAMATIQ_QUEUE_NAME": "a,b"})
    units, probe = FakeUnits(running=[1]), FakeDemandProbe()
    probe.set_queue("a", ready=1, outstanding=6, oldest_age_s=41.26)
    probe.set_queue("b", ready=0, outstanding=5)
    from dqagent.settings.workercmd import worker_shape

    policy = TargetPolicy.from_settings(s, worker_shape(s.dramatiq_command, 4))
    agent = Agent(s, units, probe, RecordingNotifier(), policy)
    caplog.set_level(logging.INFO)

    async def scenario() -> None:
        await agent.tick()
        await agent.jobs.wait()

    asyncio.run(scenario())
    (decision,) = events(caplog, "decision")
    assert decision.OLDEST_AGE_S == "41.3"  # type: ignore[attr-defined]
    assert decision.BREAKDOWN.endswith(",oldest_age_s=41.3;b:ready=0,in_flight=5,delayed=0,"  # type: ignore[attr-defined]
                                       "dead=0,orphaned=0,oldest_age_s=")
    assert decision.TARGET == 2 and "MAX_QUEUE_AGE 30s" in decision.getMessage()  # type: ignore[attr-defined]
    assert sorted(units.units) == [1, 2]
    status = [x for x in agent.notifier.sent if x.startswith("STATUS=")][-1]  # type: ignore[attr-defined]
    assert re.search(r"queue 11, oldest 41s, next check in [0-9]+s$", status), status


def test_clock_skew_is_counted_and_logged_when_it_starts_and_ends(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    r = Reporter()
    q = QueueDemand("a", ready=1, outstanding=1, delayed=0, dead=0, orphaned=0, oldest_age_s=0.0)
    for skewed in (0, 1, 1, 1, 0, 1):
        r.note_ages(Demand((q,), skewed=skewed))
    names = [getattr(x, "DQAGENT_EVENT", "") for x in caplog.records]
    assert names == ["clock_skew", "clock_skew_ended", "clock_skew"]
    assert r.skewed_ages == 4
    for _ in range(3):
        r.note_ages(Demand((q,), unreadable=1))
    assert [getattr(x, "DQAGENT_EVENT", "") for x in caplog.records].count("age_unreadable") == 1


def test_status_line_names_the_age_only_when_a_message_waits() -> None:
    from dqagent.core.reconciler import Backoff, reconcile

    plan = reconcile([], 0, min_processes=0, max_processes=1, in_flight={}, backoff=Backoff(), now_s=0)
    r = Reporter()
    assert r.status_line(plan, [], 0, 0, 5).endswith("queue 0, next check in 5s")
    r.note_ages(Demand((QueueDemand("a", ready=1, outstanding=1, delayed=0, dead=0, orphaned=0,
                                    oldest_age_s=math.pi),)))
    assert r.status_line(plan, [], 0, 3, 5).endswith("queue 3, oldest 3s, next check in 5s")
    r.note_ages(Demand(()))
    assert r.status_line(plan, [], 0, 3, 5).endswith("queue 3, next check in 5s")


# -- the simulator ---------------------------------------------------------------------------------


def test_the_simulator_observes_the_wait_of_the_ready_lists_head() -> None:
    from dqagent.core.policies import StepPolicy
    from dqagent.sim.model import PoolConfig, simulate
    from dqagent.sim.traces import Trace, generate

    # One worker, 1 thread, prefetch 2; 5 messages of 100 s at t=0 and 1 at t=12: 1 runs, 1 is held,
    # the list head waits from t=0
    trace = Trace("a", 13, ((0, 0),), bursts=((0, 5), (12, 1)), service_mean_s=100, service_cv=1e-9)
    seen: list[Observation] = []

    class Spy(StepPolicy):
        def decide(self, o: Observation, state: None) -> tuple[Decision, None]:
            seen.append(o)
            return Decision(1, "spy"), None

    simulate(generate(trace, 1), Spy(1, 1, 5, 2.5), PoolConfig(threads=1, prefetch=2, max_workers=1), tick_s=10)
    assert seen[0].oldest_age_s == 0.0 and seen[0].ready == 3
    assert seen[1].oldest_age_s == 10.0 and seen[2].oldest_age_s == 20.0
    assert [o.oldest_age_s for o in seen if o.ready == 0] == [None] * sum(1 for o in seen if o.ready == 0)


def test_the_age_rows_use_the_target_contender_with_only_settings_changed() -> None:
    from dqagent.sim.bench import AGE_LIMIT, age_contenders, contenders

    roster, target = age_contenders(), contenders()["target"]
    aged = roster[f"target+age{AGE_LIMIT}"]
    assert (aged.tick_s, aged.metric) == (target.tick_s, target.metric)
    from dqagent.sim.model import PoolConfig
    from dqagent.sim.traces import AGE_TRACES

    policy = aged.build(PoolConfig(), AGE_TRACES["trickle"])
    assert isinstance(policy, TargetPolicy) and policy.max_queue_age_s == float(AGE_LIMIT)


def test_status_text_shows_each_queues_oldest_wait() -> None:
    from dqagent.cli.status import render_text
    from tests.unit.test_status_report import report

    counts = {"ready": 1, "in_flight": 2, "delayed": 0, "dead_lettered": 0, "orphaned": 0}
    queues = {"a": {**counts, "oldest_age_s": 42.04}, "b": {**counts, "ready": 0, "oldest_age_s": None}}
    text = render_text(report(queues=queues, max_queue_age_s=30.0))
    assert "  a: ready 1, in flight 2, delayed 0, dead-lettered 0, orphaned 0, oldest waiting 42.0s " \
           "(MAX_QUEUE_AGE 30s)\n" in text
    assert "  b: ready 0, in flight 2, delayed 0, dead-lettered 0, orphaned 0, nothing waiting (MAX_QUEUE_AGE 30s)\n" \
           in text
    assert "MAX_QUEUE_AGE" not in render_text(report(queues=queues))


@pytest.mark.parametrize(("values", "accepted"), [
    ("SCALING_POLICY=target\nMAX_QUEUE_AGE=-1\n", "expected seconds in (0, 604800], or empty for off"),
    ("MAX_QUEUE_AGE=60\n", "only SCALING_POLICY=target scales on age"),
])
def test_a_bad_max_queue_age_is_one_line_and_exit_78(tmp_path: Path, values: str, accepted: str,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    from dqagent.cli.main import main
    from dqagent.errors import EXIT_CONFIG

    env = tmp_path / "dqagent.env"
    env.write_text(values)
    assert main(["--env-file", str(env), "status"]) == EXIT_CONFIG == 78
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("dqagent: invalid MAX_QUEUE_AGE=") and accepted in err, err

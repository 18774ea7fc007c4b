"""The decision step as a whole (`dqagent.core.step.decide`), over generated observations: units in every state,
jobs ours and an operator's, any demand, both policies, the guard on or off, and fleet mode."""

from __future__ import annotations

import math
from dataclasses import dataclass

from hypothesis import given
from hypothesis import strategies as st

from dqagent.core.demand import Demand, QueueDemand
from dqagent.core.fleet import FleetView, Member
from dqagent.core.guard import Headroom, Limits
from dqagent.core.policies import StepPolicy, make_policy
from dqagent.core.reconciler import Backoff, Intent, reconcile
from dqagent.core.snapshot import Reason
from dqagent.core.step import Check, FleetInput, Host, Memory, NeedsHost, Observed, Rules, decide, observe
from dqagent.settings.config import QueueMetric, parse_settings
from dqagent.settings.workercmd import worker_shape
from tests.unit.test_reconciler import unit_states

NOW_US = 1_000_000_000_000.0


@dataclass(frozen=True)
class Case:
    rules: Rules
    observed: Observed
    memory: Memory
    host: Host


@st.composite
def cases(draw: st.DrawFn) -> Case:
    numbers = draw(st.sets(st.integers(1, 14), max_size=12))
    units = tuple(draw(unit_states(n)) for n in sorted(numbers))
    in_flight = {n: draw(st.sampled_from(list(Intent))) for n in draw(st.sets(st.integers(1, 16), max_size=4))}
    lo = draw(st.integers(0, 6))
    hi = draw(st.integers(max(lo, 1), 14))
    name = draw(st.sampled_from(["step", "target"]))
    s = parse_settings({"MIN_PROCESSES": str(lo), "MAX_PROCESSES": str(hi), "SCALING_POLICY": name,
                        "GUARD": draw(st.sampled_from(["on", "off"])), "DRAMATIQ_QUEUE_NAME": "q"})
    policy = make_policy(s, name, shape=worker_shape(s.dramatiq_command, 2))
    ready, in_q, delayed = (draw(st.integers(0, 500)) for _ in range(3))
    demand = Demand((QueueDemand("q", ready, ready + in_q, delayed, 0, 0,
                                 draw(st.one_of(st.none(), st.floats(0, 3600)))),))
    observed = Observed(100.0, NOW_US, demand, units, in_flight,
                        draw(st.sampled_from([Backoff(), Backoff(2, 150.0)])))
    host = Host(Headroom(cpu_some=draw(st.floats(0, 100)), mem_available=draw(st.integers(0, 2**34)),
                         mem_total=2**34, worker_bytes=2**28), Limits(50, 10, 0))
    memory = Memory(policy.initial_state(), draw(st.one_of(st.none(), st.integers(0, 1000))),
                    draw(st.sampled_from([-math.inf, 0.0, 99.0])))
    return Case(Rules.from_settings(s, policy), observed, memory, host)


def full(case: Case) -> Check:
    """The agent's two calls: without the host, then with it when asked."""
    first = decide(case.rules, case.observed, case.memory)
    if isinstance(first, NeedsHost):
        assert case.rules.guard and first.wanted > first.pool
        first = decide(case.rules, case.observed, case.memory, host=case.host)
    assert isinstance(first, Check)
    return first


@given(cases())
def test_the_step_is_deterministic_and_asks_for_the_host_only_for_a_scale_up_with_the_guard_on(case: Case) -> None:
    check = full(case)
    assert full(case) == check
    asked = decide(case.rules, case.observed, case.memory)
    if not case.rules.guard:
        assert isinstance(asked, Check)  # the guard off never reads the host
    if isinstance(asked, Check):
        assert asked.verdict.target == asked.verdict.wanted


@given(cases())
def test_the_plan_is_the_reconcilers_for_the_decided_target_and_stays_in_min_max(case: Case) -> None:
    check, r, o = full(case), case.rules, case.observed
    assert check.plan == reconcile(o.units, check.decision.target, min_processes=r.min_processes,
                                   max_processes=r.max_processes, in_flight=o.in_flight, backoff=o.backoff,
                                   now_s=o.now_s)
    after = check.plan.pool + len(check.plan.start) - len(check.plan.stop)
    if r.min_processes <= check.plan.pool <= r.max_processes:
        assert r.min_processes <= after <= r.max_processes
    assert check.seen == observe(r, o)


@given(cases())
def test_the_guard_only_lowers_a_scale_up_and_never_below_the_pool_or_min(case: Case) -> None:
    check = full(case)
    v, pool = check.verdict, check.seen.census.pool
    assert v.target <= v.wanted
    if v.holding:
        assert v.target >= max(pool, min(case.rules.min_processes, v.wanted))  # MIN is never held
        assert check.decision.target == v.target and v.status() in check.decision.reason


@given(cases())
def test_delayed_messages_keep_one_consumer_and_say_so(case: Case) -> None:
    check = full(case)
    d = case.observed.demand
    if d.delayed > 0 and case.rules.max_processes >= 1:
        assert check.decision.target >= 1 or check.verdict.holding
    if check.label == Reason.DELAYED_MESSAGES:
        assert d.delayed > 0 and "delayed messages need a consumer" in check.decision.reason
    assert check.label in {case.rules.policy.name, *Reason}


@given(cases())
def test_reads_and_the_decision_line_follow_the_memory(case: Case) -> None:
    check, r = full(case), case.rules
    assert 0 < check.next_read_s <= max(r.read_every_s, r.check_interval_s)
    if not r.adaptive_reads:
        assert check.next_read_s == r.read_every_s
    assert check.memory.previous_outstanding == check.seen.obs.outstanding
    changed = check.decision.target != check.seen.census.pool
    assert check.routine == (not changed and case.observed.now_s - case.memory.last_logged_s < r.check_interval_s)
    assert check.memory.last_logged_s == (case.memory.last_logged_s if check.routine else case.observed.now_s)
    assert check.fields["target"] == check.decision.target and check.fields["workers"] == check.seen.census.pool


def test_fleet_mode_counts_the_delayed_message_floor_as_such() -> None:
    # Formerly only the single-host branch labelled it: in fleet mode dqagent_scale_actions_total{reason}
    # said "step" for the same rule.
    s = parse_settings({"MIN_PROCESSES": "0", "MAX_PROCESSES": "4", "FLEET": "f", "FLEET_HOST_ID": "a", "GUARD": "off"})
    policy = StepPolicy.from_settings(s)
    rules = Rules.from_settings(s, policy)
    demand = Demand((QueueDemand("q", 0, 0, 3, 0, 0),))
    observed = Observed(100.0, NOW_US, demand, (), {}, Backoff())
    me = Member("a", 4, 0, 4, workers=0, running=0, starting=0, target=0, global_target=0, decided_ms=0,
                version="t", decision="", ttl_ms=10_000, at_ms=1000)
    fleet = FleetInput(me, FleetView("f", "a", (me,), 1000))
    check = decide(rules, observed, Memory(None), fleet=fleet)
    assert isinstance(check, Check) and check.share is not None
    assert check.decision.target == 1 and check.label == Reason.DELAYED_MESSAGES
    assert check.fields["fleet_target"] == 1 and check.plan.start == (1,)


def test_in_fleet_mode_only_the_host_that_runs_the_delayed_messages_worker_counts_it_as_such() -> None:
    # G is 1 for the delayed messages; the host whose share is 0 scales for its policy's reasons
    labels = {}
    for host in ("a", "b"):
        s = parse_settings({"MIN_PROCESSES": "0", "MAX_PROCESSES": "4", "FLEET": "f", "FLEET_HOST_ID": host,
                            "GUARD": "off"})
        rules = Rules.from_settings(s, StepPolicy.from_settings(s))
        members = tuple(Member(h, 4, 0, 4, workers=0, ttl_ms=10_000, at_ms=1000) for h in ("a", "b"))
        me = next(m for m in members if m.host == host)
        observed = Observed(100.0, NOW_US, Demand((QueueDemand("q", 0, 0, 3, 0, 0),)), (), {}, Backoff())
        check = decide(rules, observed, Memory(None), fleet=FleetInput(me, FleetView("f", host, members, 1000)))
        assert isinstance(check, Check) and check.share is not None and check.share.global_target == 1
        labels[host] = (check.decision.target, check.label)
    assert sorted(labels.values()) == [(0, "step"), (1, Reason.DELAYED_MESSAGES)]


def test_rules_from_settings_take_the_agents_read_intervals() -> None:
    s = parse_settings({"SCALING_POLICY": "target", "DEMAND_POLL_INTERVAL": "2", "CHECK_INTERVAL": "60",
                        "QUEUE_METRIC": "ready"})
    rules = Rules.from_settings(s, make_policy(s, "target", shape=worker_shape(s.dramatiq_command, 2)))
    assert (rules.adaptive_reads, rules.read_every_s, rules.check_interval_s) == (True, 2.0, 60.0)
    assert rules.queue_metric is QueueMetric.READY

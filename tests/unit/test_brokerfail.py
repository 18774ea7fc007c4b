"""BROKER_FAILURE: the rule (`dqagent.core.brokerfail`), the step's rule 7, the agent's checks while Redis is down."""

from __future__ import annotations

import logging
from dataclasses import replace

import pytest

from dqagent.agent.lifecycle import Agent
from dqagent.core.brokerfail import BrokerFailure, Mode, decide
from dqagent.core.demand import Demand
from dqagent.core.policies import StepPolicy
from dqagent.core.reconciler import Backoff
from dqagent.core.snapshot import Reason
from dqagent.core.step import Check, Memory, Observed, Rules
from dqagent.core.step import decide as step
from dqagent.core.units import ActiveState
from dqagent.errors import BrokerError
from dqagent.settings.config import parse_settings
from tests.unit.fakes import FakeUnits, RecordingNotifier
from tests.unit.logged import events
from tests.unit.test_agent_loop import Clock, FakeProbe, run, status

FIXED = BrokerFailure(Mode.FIXED, count=3, grace_s=10)


@pytest.mark.parametrize(("rule", "pool", "down_s", "target", "applied"), [
    (BrokerFailure(), 4, 999, 4, False),                      # hold: the workers there are
    (BrokerFailure(), 9, 999, 6, False),                      # ... never above MAX
    (BrokerFailure(), 0, 999, 1, False),                      # ... nor below MIN
    (BrokerFailure(Mode.MIN, grace_s=10), 4, 9.9, 4, False),  # min: held in the grace period
    (BrokerFailure(Mode.MIN, grace_s=10), 4, 10, 1, True),    # then MIN
    (FIXED, 5, 5, 5, False),
    (FIXED, 5, 10, 3, True),
    (BrokerFailure(Mode.FIXED, count=0, grace_s=0), 5, 0, 1, True),   # never below MIN
    (BrokerFailure(Mode.FIXED, count=50, grace_s=0), 5, 0, 6, True),  # never above MAX
])
def test_the_rule(rule: BrokerFailure, pool: int, down_s: float, target: int, applied: bool) -> None:
    out = decide(rule, pool, 1, 6, 100.0, 100.0 + down_s)
    assert (out.decision.target, out.applied) == (target, applied)
    assert out.grace_left_s == (0 if applied or rule.mode is Mode.HOLD else pytest.approx(rule.grace_s - down_s))


def rules(rule: BrokerFailure) -> Rules:
    s = parse_settings({"MIN_PROCESSES": "1", "MAX_PROCESSES": "6", "GUARD": "off"})
    return replace(Rules.from_settings(s, StepPolicy.from_settings(s)), broker_failure=rule)


def running(units: FakeUnits) -> list[int]:
    return sorted(n for n, u in units.units.items() if u.active == ActiveState.ACTIVE)


def test_the_step_decides_by_it_with_no_demand_and_keeps_the_policys_state() -> None:
    from tests.unit.test_reconciler import unit

    units = [unit(n) for n in range(1, 6)]
    seen = Observed(111.0, 111e6, Demand(()), units, {}, Backoff(), broker_down_since_s=100.0)
    check = step(rules(FIXED), seen, Memory("the policy's state"))
    assert isinstance(check, Check)
    assert check.decision.target == 3 and check.plan.stop == (5, 4) and check.label == Reason.BROKER_FAILURE
    assert check.memory.policy_state == "the policy's state"
    held = step(rules(FIXED), Observed(105.0, 105e6, Demand(()), units, {}, Backoff(), broker_down_since_s=100.0),
                Memory(None))
    assert isinstance(held, Check) and held.plan.empty and "BROKER_FAILURE=fixed in 5s" in held.decision.reason


def test_the_agent_holds_through_the_grace_then_goes_to_the_count_and_back_to_its_policy(
        caplog: pytest.LogCaptureFixture) -> None:
    s = parse_settings({"GUARD": "off", "MIN_PROCESSES": "1", "MAX_PROCESSES": "6", "CHECK_INTERVAL": "1",
                        "PROCESS_STARTUP_DELAY": "0", "GRACEFUL_SHUTDOWN_TIMEOUT": "1", "BROKER_FAILURE": "fixed",
                        "BROKER_FAILURE_COUNT": "3", "BROKER_FAILURE_GRACE": "10"})
    clock, units, probe = Clock(), FakeUnits(running=[1]), FakeProbe(ready=10)
    agent = Agent(s, units, probe, RecordingNotifier(), StepPolicy.from_settings(s), clock=clock)
    caplog.set_level(logging.INFO)

    async def scenario() -> None:
        await agent.tick()
        await agent.jobs.wait()
        assert len(running(units)) == 2  # 10 > 1 x 5: +1
        # When Redis goes down: the workers are kept through the grace period, the next try by its end
        probe.error = BrokerError("connection refused")
        assert await agent.tick() == 2.0 and len(running(units)) == 2  # the Redis backoff: 2, 4, 8 s ...
        assert "BROKER_FAILURE=fixed in 10s" in status(agent)
        assert agent.latest is not None and not agent.latest.default.broker_failure_active
        clock.now += 8
        assert await agent.tick() == pytest.approx(2.1)  # 4 s of backoff, but the grace period ends in 2 s
        # Then after it: BROKER_FAILURE_COUNT workers, said in STATUS=, the journal and the snapshot
        clock.now += 2.1
        await agent.tick()
        await agent.jobs.wait()
        assert len(running(units)) == 3
        assert "BROKER_FAILURE=fixed: 3 workers" in status(agent)
        assert [r.TARGET for r in events(caplog, "broker_failure_applied")] == [3]  # type: ignore[attr-defined]
        assert agent.latest is not None and agent.latest.default.broker_failure_active
        clock.now += 2
        await agent.tick()  # logged once per outage
        assert len(events(caplog, "broker_failure_applied")) == 1
        # When Redis answers again (an empty queue): the end is logged and the policy decides at once
        probe.error = None
        probe.set_queue("q", ready=0)
        await agent.tick()
        await agent.jobs.wait()
        assert len(running(units)) == 2  # 0 < 3 x 2.5: -1, the step rule's own decision
        assert events(caplog, "broker_failure_ended")
        assert agent.latest is not None and not agent.latest.default.broker_failure_active

    run(scenario)

"""systemd's start limits: the rule (`dqagent.core.startlimit`), the reconciler's `avoid`, the simulator's model of
StartLimitBurst, and the agent and the simulator deciding alike through a broker outage and flipping demand."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import pytest

from dqagent.agent.lifecycle import Agent
from dqagent.core import startlimit
from dqagent.core.brokerfail import BrokerFailure, Mode
from dqagent.core.policies import StepPolicy
from dqagent.core.reconciler import Backoff, reconcile
from dqagent.core.step import Check, Memory, Observed, Rules
from dqagent.core.units import ActiveState
from dqagent.errors import BrokerError
from dqagent.settings.config import parse_settings
from dqagent.sim import agenttick
from dqagent.sim import model as sim_model
from dqagent.sim.model import PoolConfig, Result, simulate
from dqagent.sim.traces import Trace, Workload
from dqagent.systemd.client import worker_instance
from tests.unit.fakes import Clock, FakeDemandProbe, FakeUnit, FakeUnits, RecordingNotifier
from tests.unit.test_reconciler import unit


def test_a_number_started_three_times_in_60_s_is_worn_until_its_first_start_is_60_s_old() -> None:
    starts = startlimit.record({}, [1, 2], 0.0)
    starts = startlimit.record(starts, [1], 20.0)
    assert startlimit.worn(starts, 20.0) == frozenset()
    starts = startlimit.record(starts, [1], 40.0)
    assert startlimit.worn(starts, 40.0) == {1}
    assert startlimit.worn(starts, 59.9) == {1} and startlimit.worn(starts, 60.0) == frozenset()
    assert startlimit.record(starts, [], 61.0) == {1: (20.0, 40.0)}  # the old starts are dropped


def test_the_reconciler_takes_a_worn_number_last() -> None:
    plan = reconcile([unit(2)], 3, min_processes=0, max_processes=10, in_flight={}, backoff=Backoff(), now_s=0,
                     avoid={1, 3})
    assert plan.start == (4, 5)
    # with no other number free (MAX_INSTANCE is the limit) a worn one is still started
    everything = [unit(n) for n in range(2, 1001)]
    plan = reconcile(everything, 1000, min_processes=0, max_processes=1000, in_flight={}, backoff=Backoff(),
                     now_s=0, avoid={1})
    assert plan.start == (1,)


def test_a_unit_failed_with_start_limit_hit_is_reset_and_reused_or_another_number_taken() -> None:
    hit = unit(1, ActiveState.FAILED, "failed", result="start-limit-hit")
    # An operator's starts (not the agent's): its number is reset and reused (ResetFailedUnit clears the count)
    plan = reconcile([hit], 1, min_processes=0, max_processes=5, in_flight={}, backoff=Backoff(), now_s=0)
    assert (plan.start, plan.reset) == ((1,), (1,))
    # The agent's own starts wore it: another number, the failed one left for later
    plan = reconcile([hit], 1, min_processes=0, max_processes=5, in_flight={}, backoff=Backoff(), now_s=0,
                     avoid={1})
    assert (plan.start, plan.reset) == ((2,), ())


# -- the simulator and the agent ---------------------------------------------------------------------------------

SETTINGS = parse_settings({
    "MIN_PROCESSES": "0", "MAX_PROCESSES": "4", "CHECK_INTERVAL": "1", "PROCESS_STARTUP_DELAY": "0",
    "GRACEFUL_SHUTDOWN_TIMEOUT": "1", "GUARD": "off", "DRAMATIQ_QUEUE_NAME": "default",
    "BROKER_FAILURE": "fixed", "BROKER_FAILURE_COUNT": "4", "BROKER_FAILURE_GRACE": "5"})
POLICY = StepPolicy.from_settings(SETTINGS)
#: Workers ready at once; Redis unreadable from t=70 to t=90 (BROKER_FAILURE=fixed, 4 workers after 5 s).
POOL = PoolConfig(threads=2, prefetch=4, startup_delay_s=0, min_workers=0, max_workers=4, check_interval_s=1,
                  check_delay_s=0, broker_outages_s=((70.0, 90.0),),
                  broker_failure=BrokerFailure(Mode.FIXED, count=4, grace_s=5))


@dataclass(frozen=True)
class Read:
    observed: Observed
    memory: Memory
    check: Check


def flipping() -> Workload:
    """A burst of 20 short tasks every 2 s for 120 s: the pool grows and empties about once a second."""
    arrivals = tuple(t + i * 0.01 for t in range(0, 120, 2) for i in range(20))
    return Workload(Trace("flipping", 120, ((0, 0),)), 1, arrivals, (0.2,) * len(arrivals), ())


def simulated(monkeypatch: pytest.MonkeyPatch) -> tuple[Result, list[Read], agenttick.SimAgent]:
    reads: list[Read] = []
    agents: list[agenttick.SimAgent] = []
    step = agenttick.decide

    def spy(rules: Rules, observed: Observed, memory: Memory, **kw: Any) -> Any:
        out = step(rules, observed, memory, **kw)
        if isinstance(out, Check):
            reads.append(Read(observed, memory, out))
        return out

    class Recorded(agenttick.SimAgent):
        def __init__(self, *args: Any, **kw: Any) -> None:
            super().__init__(*args, **kw)
            agents.append(self)

    monkeypatch.setattr(agenttick, "decide", spy)
    monkeypatch.setattr(sim_model, "SimAgent", Recorded)
    result = simulate(flipping(), POLICY, POOL, 1.0, horizon_s=120)
    monkeypatch.undo()
    return result, reads, agents[0]


def test_the_simulators_start_limit_is_hit_without_the_rule(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(startlimit, "worn", lambda *a, **kw: frozenset())
    monkeypatch.setattr("dqagent.core.step.startlimit.worn", lambda *a, **kw: frozenset())
    sim = simulated(monkeypatch)[2]
    assert sim.start_limit_hits  # the same numbers started once a second: systemd refuses the 6th in 60 s


def test_the_agent_decides_and_acts_as_the_simulator_through_an_outage_and_flipping_demand(
        monkeypatch: pytest.MonkeyPatch) -> None:
    result, reads, sim = simulated(monkeypatch)
    # The simulated run hit no start limit, used fresh numbers, and went through the outage's three phases
    assert sim.start_limit_hits == []
    assert max(life.number for life in result.lives) > 4
    down = [r for r in reads if r.observed.broker_down_since_s is not None]
    assert any(r.check.plan.stop or r.check.plan.start for r in down)
    assert {r.check.plan.wanted for r in down if r.observed.now_s >= 75.0} == {4}
    clock, wall, units, probe = Clock(), Clock(), FakeUnits(), FakeDemandProbe()
    agent = Agent(SETTINGS, units, probe, RecordingNotifier(), POLICY, clock=clock, wallclock=wall)

    async def mirror(read: Read) -> list[tuple[str, int]]:
        o = read.observed
        clock.now, wall.now = o.now_s, o.now_us / 1e6
        units.units = {u.instance: FakeUnit(u.active_state, u.sub_state, u.result, u.job_type, u.main_pid,
                                            active_enter_us=u.active_enter_us) for u in o.units}
        units.calls.clear()
        probe.demand = o.demand
        probe.error = BrokerError("down") if o.broker_down_since_s is not None else None
        agent.outage.since_s = o.broker_down_since_s  # the agent's own memory of the outage, as the sim's
        agent.memory, agent.jobs.backoff, agent.jobs.starts = read.memory, o.backoff, dict(o.starts)
        await agent.tick()
        await agent.jobs.wait()
        return [(kind, worker_instance(u) or 0) for kind, names in units.calls for u in names]

    for read in reads:
        now = read.observed.now_s
        calls = asyncio.run(mirror(read))
        assert sorted(n for kind, n in calls if kind == "start") == sorted(read.check.plan.start), now
        assert sorted(n for kind, n in calls if kind == "stop") == sorted(read.check.plan.stop), now
        assert agent.latest is not None and agent.latest.default.workers is not None
        assert agent.latest.default.workers.desired == read.check.plan.wanted, now



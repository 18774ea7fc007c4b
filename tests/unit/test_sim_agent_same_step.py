"""The agent and the simulator take the same decisions on the same observations.

The simulator runs a pool through scale-ups (some held by the guard on an over-committed host, one failed
start, the reuse of its number), drains and scale-downs, with adaptive reads. Every observation its agent
made is then handed to the real `dqagent.agent.lifecycle.Agent` (systemd and Redis faked: `tests/unit/fakes.py`): the
same units, demand, clock, backoff, memory and host reading. Both must then act alike, read by read: the
same units started, reset and stopped, the same target, the same next read and the same memory and backoff
handed on. A rule either side applies outside the shared step (`dqagent.core.step.decide`) breaks one of these.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, replace
from typing import Any

import pytest

from dqagent.agent.lifecycle import Agent
from dqagent.core.guard import Limits
from dqagent.core.policies import make_policy
from dqagent.core.step import Check, Host, Memory, Observed, Rules
from dqagent.settings.config import parse_settings
from dqagent.settings.workercmd import worker_shape
from dqagent.sim import agenttick
from dqagent.sim.host import HostModel
from dqagent.sim.model import PoolConfig, Result, simulate
from dqagent.sim.traces import Trace, Workload
from dqagent.systemd.client import worker_instance
from tests.unit.fakes import Clock, FakeDemandProbe, FakeUnit, FakeUnits, RecordingNotifier

RAW = {
    "SCALING_POLICY": "target", "MIN_PROCESSES": "1", "MAX_PROCESSES": "6", "DEMAND_POLL_INTERVAL": "2",
    # CHECK_INTERVAL below 2 x DEMAND_POLL_INTERVAL: the idle read interval is bounded by it
    "CHECK_INTERVAL": "3", "PROCESS_STARTUP_DELAY": "0", "SCALE_DOWN_WINDOW": "10", "GUARD": "on",
    "GUARD_CPU_PRESSURE": "50", "GUARD_MEMORY_PRESSURE": "10", "DRAMATIQ_QUEUE_NAME": "default",
    "GRACEFUL_SHUTDOWN_TIMEOUT": "1"}
SETTINGS = parse_settings(RAW)
POLICY = make_policy(SETTINGS, "target", shape=worker_shape(SETTINGS.dramatiq_command, 2))
LIMITS = Limits(50, 10, 0)
#: Workers ready as soon as their start job ends, checked at once (PROCESS_STARTUP_DELAY=0) as the fake's are;
#: a stopped process lives 3 s after its drain; the start nearest t=2.5 fails.
POOL = PoolConfig(threads=2, prefetch=4, startup_delay_s=0, min_workers=1, max_workers=6, check_interval_s=3,
                  check_delay_s=0, stop_delay_s=3, failed_starts_s=((2.5, 0.0),), failure_match_s=1.0)


@dataclass(frozen=True)
class Read:
    """One read of the simulated agent: what it passed to the step, and what the step returned."""

    rules: Rules
    observed: Observed
    memory: Memory
    host: Host | None
    check: Check


def simulated(monkeypatch: pytest.MonkeyPatch, pool: PoolConfig = POOL, policy: Any = POLICY
              ) -> tuple[Result, list[Read]]:
    reads: list[Read] = []
    step = agenttick.decide

    def spy(rules: Rules, observed: Observed, memory: Memory, **kw: Any) -> Any:
        out = step(rules, observed, memory, **kw)
        if isinstance(out, Check):
            reads.append(Read(rules, observed, memory, kw.get("host"), out))
        return out

    monkeypatch.setattr(agenttick, "decide", spy)
    # Two bursts of 4 s tasks, 40 s apart, on a host with 2 workers' worth of CPU
    arrivals = tuple(2.0 + i * 0.05 for i in range(80)) + tuple(60.0 + i * 0.1 for i in range(30))
    workload = Workload(Trace("two bursts", 120, ((0, 0),)), 1, arrivals, (4.0,) * len(arrivals), ())
    result = simulate(workload, policy, pool, 2.0, host=HostModel(capacity=2), guard=LIMITS, adaptive_reads=True,
                      first_read_s=0.5)
    monkeypatch.undo()
    return result, reads


def test_the_agent_decides_and_acts_as_the_simulator_on_every_read_it_made(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given every read the simulated agent made
    result, reads = simulated(monkeypatch)
    assert len(reads) == len(result.samples) > 20
    # Then the agent, on each, acts alike
    same_on_every_read(monkeypatch, result, reads, SETTINGS, POLICY)
    # (and the run went through every rule: starts, stops, a reset, a scale-up held by the guard)
    plans = [r.check.plan for r in reads]
    assert any(p.start for p in plans) and any(p.stop for p in plans) and any(p.reset for p in plans)
    assert any(r.check.verdict.holding for r in reads)


#: The simulated wall clock starts at EPOCH_US, 1970-01-13 17:25:11.6 UTC: a ceiling of 2 until 17:26, no window,
#: then a floor of 5 from 17:27 (the second burst, and the end of the run, fall in it).
SCHEDULE = "* 17:25-17:26 max=2; * 17:27-17:40 min=5"


def test_with_a_schedule_the_agent_decides_as_the_simulator(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = parse_settings({**RAW, "SCHEDULE": SCHEDULE, "SCHEDULE_TIMEZONE": "UTC",
                               "PROCESS_STARTUP_DELAY": "0"})
    policy = make_policy(settings, "target", shape=worker_shape(settings.dramatiq_command, 2))
    result, reads = simulated(monkeypatch, replace(POOL, schedule=settings.schedule, schedule_timezone="UTC"),
                              policy)
    same_on_every_read(monkeypatch, result, reads, settings, policy)
    # (the schedule decided: the ceiling held the first burst at 2, the floor raised the pool to 5 at 17:27)
    labels = [(r.check.label, r.check.decision.target) for r in reads]
    assert ("schedule", 2) in labels and ("schedule", 5) in labels
    assert max(r.check.decision.target for r in reads if r.observed.now_s < 48) == 2


def same_on_every_read(monkeypatch: pytest.MonkeyPatch, result: Result, reads: list[Read], settings: Any,
                       policy: Any) -> None:
    """The real agent, handed each read the simulated agent made, starts, resets and stops the same units, wants
    the same target and hands the next read the same memory and backoff at the same time."""
    clock, wall, units, probe = Clock(), Clock(), FakeUnits(), FakeDemandProbe()
    agent = Agent(settings, units, probe, RecordingNotifier(), policy, clock=clock, wallclock=wall)
    assert all(r.rules == Rules.from_settings(settings, policy) for r in reads)

    async def mirror(read: Read) -> tuple[float, list[tuple[str, int]]]:
        """The agent's tick on the world the simulated agent saw; its jobs then run to their end."""
        o = read.observed
        clock.now, wall.now = o.now_s, o.now_us / 1e6
        units.units = {u.instance: FakeUnit(u.active_state, u.sub_state, u.result, u.job_type, u.main_pid,
                                            active_enter_us=u.active_enter_us) for u in o.units}
        units.broken = {life.number for life in result.lives if life.failed and life.started_s == o.now_s}
        units.calls.clear()
        probe.demand = o.demand
        agent.memory, agent.jobs.backoff = read.memory, o.backoff

        async def host(settings: object) -> Host:
            assert read.host is not None, "the agent asked for the host where the simulator did not"
            return read.host

        monkeypatch.setattr(agent.guard, "read", host)
        delay = await agent.tick()
        await agent.jobs.wait()
        return delay, [(kind, worker_instance(u) or 0) for kind, names in units.calls for u in names]

    for k, read in enumerate(reads):
        now = read.observed.now_s
        delay, calls = asyncio.run(mirror(read))
        # Then the agent starts, resets and stops exactly what the simulated agent did
        started = sorted(n for kind, n in calls if kind == "start")
        assert started == sorted(life.number for life in result.lives if life.started_s == now), now
        assert [n for kind, n in calls if kind == "reset"] == list(read.check.plan.reset), now
        # (a start that failed its check is stopped by the job table, not by a decision)
        stopped = sorted(n for kind, n in calls if kind == "stop" and n not in started)
        assert stopped == sorted(life.number for life in result.lives if life.stopped_s == now), now
        assert agent.latest is not None and agent.latest.default.workers is not None
        assert agent.latest.default.workers.desired == result.samples[k].workers
        if k + 1 < len(reads):
            # and hands the next read the same memory and backoff, at the same time
            following = reads[k + 1]
            assert delay == pytest.approx(following.observed.now_s - now), now
            assert agent.memory == following.memory
            assert agent.jobs.backoff == following.observed.backoff, now

"""The simulator models `dqagent pause` as the agent applies it: a run with a pause window (a burst arrives while
paused) and a maintenance window (`--at 0`), every read handed to the real agent (systemd and Redis faked), which
must start and stop exactly what the simulated agent did."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import pytest

from dqagent.agent.lifecycle import Agent
from dqagent.core.pause import Pause
from dqagent.core.policies import make_policy
from dqagent.core.step import Check, Memory, Observed
from dqagent.settings.config import parse_settings
from dqagent.settings.workercmd import worker_shape
from dqagent.sim import agenttick
from dqagent.sim.agenttick import EPOCH_S
from dqagent.sim.model import PoolConfig, Result, simulate
from dqagent.sim.traces import Trace, Workload
from dqagent.systemd.client import worker_instance
from tests.unit.fakes import Clock, FakeDemandProbe, FakeUnit, FakeUnits, RecordingNotifier

SETTINGS = parse_settings({
    "SCALING_POLICY": "target", "MIN_PROCESSES": "1", "MAX_PROCESSES": "6", "DEMAND_POLL_INTERVAL": "2",
    "CHECK_INTERVAL": "3", "PROCESS_STARTUP_DELAY": "0", "SCALE_DOWN_WINDOW": "10", "GUARD": "off",
    "DRAMATIQ_QUEUE_NAME": "default", "GRACEFUL_SHUTDOWN_TIMEOUT": "1"})
POLICY = make_policy(SETTINGS, "target", shape=worker_shape(SETTINGS.dramatiq_command, 2))
POOL = PoolConfig(threads=2, prefetch=4, startup_delay_s=0, min_workers=1, max_workers=6, check_interval_s=3,
                  check_delay_s=0, stop_delay_s=3)
#: Paused from t=5 s to t=35 s (a burst arrives at 10 s), in maintenance at 0 from 70 s to 90 s.
PAUSES = (Pause("default", 0, "root", "deploy", EPOCH_S + 5, EPOCH_S + 35),
          Pause("default", 0, "root", "migration", EPOCH_S + 70, EPOCH_S + 90, at=0))


@dataclass(frozen=True)
class Read:
    observed: Observed
    memory: Memory
    pause: Pause | None
    check: Check


def simulated(monkeypatch: pytest.MonkeyPatch) -> tuple[Result, list[Read]]:
    reads: list[Read] = []
    step = agenttick.decide

    def spy(rules: Any, observed: Observed, memory: Memory, **kw: Any) -> Any:
        out = step(rules, observed, memory, **kw)
        if isinstance(out, Check):
            reads.append(Read(observed, memory, kw.get("pause"), out))
        return out

    monkeypatch.setattr(agenttick, "decide", spy)
    arrivals = tuple(10.0 + i * 0.05 for i in range(80)) + tuple(60.0 + i * 0.2 for i in range(60))
    workload = Workload(Trace("bursts", 120, ((0, 0),)), 1, arrivals, (4.0,) * len(arrivals), ())
    result = simulate(workload, POLICY, POOL, 2.0, adaptive_reads=True, first_read_s=0.5, pauses=PAUSES)
    monkeypatch.undo()
    return result, reads


def test_a_pause_window_and_maintenance_decide_alike_in_the_agent_and_the_simulator(
        monkeypatch: pytest.MonkeyPatch) -> None:
    result, reads = simulated(monkeypatch)
    clock, wall, units, probe = Clock(), Clock(), FakeUnits(), FakeDemandProbe()
    agent = Agent(SETTINGS, units, probe, RecordingNotifier(), POLICY, clock=clock, wallclock=wall)

    async def mirror(read: Read) -> tuple[float, list[tuple[str, int]]]:
        o = read.observed
        clock.now, wall.now = o.now_s, o.now_us / 1e6
        units.units = {u.instance: FakeUnit(u.active_state, u.sub_state, u.result, u.job_type, u.main_pid,
                                            active_enter_us=u.active_enter_us) for u in o.units}
        units.calls.clear()
        probe.demand = o.demand
        agent.memory, agent.jobs.backoff = read.memory, o.backoff
        agent.pauses.active = {"default": read.pause} if read.pause is not None else {}
        delay = await agent.tick()
        await agent.jobs.wait()
        return delay, [(kind, worker_instance(u) or 0) for kind, names in units.calls for u in names]

    for k, read in enumerate(reads):
        now = read.observed.now_s
        delay, calls = asyncio.run(mirror(read))
        started = sorted(n for kind, n in calls if kind == "start")
        assert started == sorted(life.number for life in result.lives if life.started_s == now), now
        stopped = sorted(n for kind, n in calls if kind == "stop" and n not in started)
        assert stopped == sorted(life.number for life in result.lives if life.stopped_s == now), now
        if read.pause is not None and read.pause.at is None:
            assert not started and not stopped, now  # paused: nothing starts for the burst, nothing stops
        if k + 1 < len(reads):
            following = reads[k + 1]
            gap = following.observed.now_s - now
            if any(following.observed.now_s == pytest.approx(p.since_s - EPOCH_S) for p in PAUSES):
                assert delay >= gap  # the request wakes the agent (the simulator reads when it arrives)
            else:  # ... and its deadline is a check of its own, in both
                assert delay == pytest.approx(gap), now
            assert agent.memory == following.memory
    # (the run went through both windows: the pause held a burst, maintenance stopped every worker, and the
    # pool followed demand after each)
    paused = [r for r in reads if r.pause is not None and r.pause.at is None]
    assert paused and max(r.observed.demand.ready for r in paused) > 20
    drained = [r for r in reads if r.pause is not None and r.pause.at == 0]
    assert drained and drained[-1].check.plan.wanted == 0
    assert any(r.check.plan.start for r in reads if 35 <= r.observed.now_s < 60)

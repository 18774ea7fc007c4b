"""SCHEDULE through the agent's loop (systemd and Redis faked): the pre-warm starts the floor's workers the lead
before the window opens (PROCESS_STARTUP_DELAY + the measured StartUnit time), the agent reads again at each
change however long CHECK_INTERVAL is, and STATUS=, the journal (`schedule_changed`) and the snapshot say so."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from datetime import UTC, datetime

import pytest

from dqagent.agent.lifecycle import Agent
from dqagent.core.policies import StepPolicy
from dqagent.core.units import JobOutcome
from dqagent.settings.config import parse_settings
from tests.unit.fakes import FakeUnits, RecordingNotifier
from tests.unit.logged import events
from tests.unit.test_agent_loop import Clock, FakeProbe

SETTINGS = parse_settings({"GUARD": "off", "MIN_PROCESSES": "1", "MAX_PROCESSES": "5", "CHECK_INTERVAL": "600",
                           "PROCESS_STARTUP_DELAY": "2", "GRACEFUL_SHUTDOWN_TIMEOUT": "1",
                           "SCHEDULE": "* 10:00-11:00 min=3", "SCHEDULE_TIMEZONE": "UTC"})


class SlowStarts(FakeUnits):
    """Each StartUnit takes 1.5 s of the agent's monotonic clock."""

    def __init__(self, clock: Clock) -> None:
        super().__init__()
        self.clock = clock

    async def start_units(self, units: Sequence[str], timeout_s: float = 90) -> list[JobOutcome]:
        self.clock.now += 1.5
        return await super().start_units(units, timeout_s)


def at(iso: str) -> float:
    return datetime.fromisoformat(iso).replace(tzinfo=UTC).timestamp()


def test_the_agent_pre_warms_a_floor_and_reads_again_at_each_change(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    clock, wall = Clock(), Clock()
    units = SlowStarts(clock)
    units.run(1)
    notifier = RecordingNotifier()
    agent = Agent(SETTINGS, units, FakeProbe(), notifier, StepPolicy.from_settings(SETTINGS), clock=clock,
                  wallclock=wall)

    async def tick(iso: str) -> float:
        wall.now = at(iso)
        delay = await agent.tick()
        await agent.jobs.wait()
        return delay

    async def scenario() -> None:
        # 10 s before the window: nothing yet, and the next read is at the pre-warm (lead 2 s: nothing measured)
        assert await tick("2024-01-15T09:59:50") == pytest.approx(8.0)
        assert len(units.calls) == 0
        # At the pre-warm: 2 more workers, and the opening is the next read
        assert await tick("2024-01-15T09:59:58") == pytest.approx(2.0)
        assert sorted(n for kind, names in units.calls if kind == "start" for n in names) == [
            "dramatiq-worker@2.service", "dramatiq-worker@3.service"]
        assert agent.jobs.start_s == pytest.approx(1.5)  # measured: the next lead is 3.5 s
        assert "schedule pre-warming * 10:00-11:00 min=3 (min=3), next change Mon 10:00 UTC" in notifier.sent[-1]
        # When it opens: logged again; its end is 3,600 s away, so CHECK_INTERVAL's 600 s comes first
        assert await tick("2024-01-15T10:00:00") == pytest.approx(600.0)
        assert "schedule * 10:00-11:00 min=3 (min=3), next change Mon 11:00 UTC" in notifier.sent[-1]
        assert agent.latest is not None and agent.latest.default.schedule_floor == 3

    asyncio.run(scenario())
    changes = events(caplog, "schedule_changed")
    assert [(vars(r)["WARMING"], vars(r)["WINDOWS"], vars(r)["FLOOR"]) for r in changes] == [
        ("", "", ""), ("* 10:00-11:00 min=3", "", "3"), ("", "* 10:00-11:00 min=3", "3")]
    ups = events(caplog, "scale_up")
    assert len(ups) == 1 and "schedule floor 3" in ups[0].getMessage()
    assert dict(agent.counters.frozen().scale_actions)[("default", "up", "schedule")] == 1

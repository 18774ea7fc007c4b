"""The loop's decisions with fakes for systemd and Redis (both have integration tests of their own)."""

from __future__ import annotations

import asyncio
import logging

import pytest

from dqagent.agent import Agent, free_instances, highest_instances
from dqagent.config import parse_settings
from dqagent.demand import FakeDemandProbe
from dqagent.errors import BrokerError
from dqagent.notify import RecordingNotifier
from dqagent.policies import StepPolicy
from tests.unit.fakes import FakeUnits

SETTINGS = parse_settings({"MIN_PROCESSES": "1", "MAX_PROCESSES": "5", "CHECK_INTERVAL": "1",
                           "PROCESS_STARTUP_DELAY": "0", "GRACEFUL_SHUTDOWN_TIMEOUT": "1"})


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def FakeProbe(ready: int = 0, delayed: int = 0) -> FakeDemandProbe:
    """The broker fake with one queue `q`."""
    probe = FakeDemandProbe()
    probe.set_queue("q", ready=ready, delayed=delayed)
    return probe


def make(units: FakeUnits, probe: FakeDemandProbe, clock: Clock | None = None, **kw: object) -> Agent:
    return Agent(SETTINGS, units, probe, RecordingNotifier(), StepPolicy.from_settings(SETTINGS),
                 clock=clock or Clock(), **kw)  # type: ignore[arg-type]


def test_lowest_free_and_highest_occupied_numbers() -> None:
    units = FakeUnits(running=[1, 3, 4])
    states = asyncio.run(units.worker_states())
    assert free_instances(states, 3) == [2, 5, 6]
    assert highest_instances(states, 2) == [4, 3]


def test_tick_scales_up_to_lowest_free_number_and_down_from_highest() -> None:
    units, probe = FakeUnits(running=[1, 3]), FakeProbe(ready=11)
    agent = make(units, probe)
    asyncio.run(agent.tick())  # 11 > 2 x 5
    assert units.calls[-1] == ("start", ("dramatiq-worker@2.service",))
    probe.set_queue("q", ready=0)
    asyncio.run(agent.tick())
    assert units.calls[-1] == ("stop", ("dramatiq-worker@3.service",))


def test_redis_error_keeps_workers_and_logs_once(caplog: pytest.LogCaptureFixture) -> None:
    units, probe = FakeUnits(running=[1, 2, 3]), FakeProbe()
    agent = make(units, probe)
    probe.error = BrokerError("redis redis://h:1/0: ConnectionError")
    caplog.set_level(logging.INFO)
    delays = [asyncio.run(agent.tick()) for _ in range(4)]
    assert units.calls == []  # never scales on unknown data
    assert delays == [2, 4, 8, 16]  # doubling, capped at max(CHECK_INTERVAL, 30 s)
    errors = [r for r in caplog.records if getattr(r, "DQAGENT_EVENT", "") == "redis_error"]
    assert len(errors) == 1
    probe.error = None
    asyncio.run(agent.tick())
    assert [r for r in caplog.records if getattr(r, "DQAGENT_EVENT", "") == "redis_ok"]


def test_failed_start_backs_off_scale_ups() -> None:
    clock = Clock()
    units, probe = FakeUnits(running=[1], broken=[2, 3]), FakeProbe(ready=100)
    agent = make(units, probe, clock)
    asyncio.run(agent.tick())
    starts = [c for c in units.calls if c[0] == "start"]
    assert starts == [("start", ("dramatiq-worker@2.service",))]
    clock.now += 1
    asyncio.run(agent.tick())  # within the backoff: no new start attempt
    assert [c for c in units.calls if c[0] == "start"] == starts
    clock.now += 10
    asyncio.run(agent.tick())  # after it: the failed number is reset and reused
    assert ("reset", ("dramatiq-worker@2.service",)) in units.calls
    assert [c for c in units.calls if c[0] == "start"][-1] == ("start", ("dramatiq-worker@2.service",))


@pytest.mark.parametrize(("job", "under_systemd", "stopped"),
                         [("stop", True, True), ("restart", True, False), ("", True, False), ("", False, True)])
def test_shutdown_stops_workers_only_when_the_agent_is_stopped(job: str, under_systemd: bool, stopped: bool) -> None:
    units, probe = FakeUnits(running=[1, 2]), FakeProbe()
    units.job = job
    agent = make(units, probe, under_systemd=under_systemd)

    async def run() -> int:
        task = asyncio.create_task(agent.run())
        await asyncio.sleep(0.05)
        agent.stop_requested.set()
        return await task

    assert asyncio.run(run()) == 0
    assert (units.units == {}) is stopped
    notes = agent.notifier.sent  # type: ignore[attr-defined]
    assert notes[0] == "READY=1" and "STOPPING=1" in notes


def test_watchdog_pings_only_while_the_loop_makes_progress() -> None:
    clock = Clock()
    agent = make(FakeUnits(), FakeProbe(), clock, watchdog_s=0.01)

    async def run() -> list[str]:
        agent._progress_deadline = clock.now + 5
        task = asyncio.create_task(agent._watchdog())
        await asyncio.sleep(0.05)
        alive = list(agent.notifier.sent)  # type: ignore[attr-defined]
        clock.now += 10  # the loop missed its deadline: hung
        agent.notifier.sent.clear()  # type: ignore[attr-defined]
        await asyncio.sleep(0.05)
        task.cancel()
        return [*alive, "--", *agent.notifier.sent]  # type: ignore[attr-defined]

    sent = asyncio.run(run())
    split = sent.index("--")
    assert "WATCHDOG=1" in sent[:split]
    assert "WATCHDOG=1" not in sent[split:]


def test_delayed_messages_keep_one_consumer_when_min_is_zero() -> None:
    settings = parse_settings({"MIN_PROCESSES": "0", "MAX_PROCESSES": "5", "CHECK_INTERVAL": "1",
                               "PROCESS_STARTUP_DELAY": "0"})
    units, probe = FakeUnits(running=[1]), FakeProbe(delayed=3)
    agent = Agent(settings, units, probe, RecordingNotifier(), StepPolicy.from_settings(settings), clock=Clock())
    asyncio.run(agent.tick())
    assert units.units == {1: "running"}  # the step rule alone would stop it (0 < 1 x 2.5)
    probe.set_queue("q", delayed=0)
    asyncio.run(agent.tick())
    assert units.units == {}


def test_refused_requests_are_logged_as_failures_not_successes(caplog: pytest.LogCaptureFixture) -> None:
    units, probe = FakeUnits(running=[1, 2, 3]), FakeProbe(ready=0)
    units.refuse = "org.freedesktop.DBus.Error.AccessDenied"
    caplog.set_level(logging.INFO)
    asyncio.run(make(units, probe).tick())
    events = [getattr(r, "DQAGENT_EVENT", "") for r in caplog.records]
    assert "worker_stop_failed" in events and "worker_stopped" not in events


def test_refused_reset_counts_as_a_failed_start_and_backs_off(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    units, probe = FakeUnits(running=[1], broken=[2]), FakeProbe(ready=100)
    units.units[2] = "failed"
    units.refuse = "org.freedesktop.DBus.Error.AccessDenied"
    caplog.set_level(logging.INFO)
    asyncio.run(make(units, probe, clock).tick())  # must not raise: the loop keeps running
    failed = [r for r in caplog.records if getattr(r, "DQAGENT_EVENT", "") == "worker_failed"]
    assert any("AccessDenied" in str(getattr(r, "RESULT", "")) for r in failed)
    assert [r for r in caplog.records if getattr(r, "DQAGENT_EVENT", "") == "start_backoff"]


def test_stop_signal_asks_systemd_for_time_at_once() -> None:
    agent = make(FakeUnits(), FakeProbe())
    agent._on_stop_signal()
    sent = agent.notifier.sent  # type: ignore[attr-defined]
    assert sent and sent[0].startswith("EXTEND_TIMEOUT_USEC=") and agent.stop_requested.is_set()

"""The loop's decisions with fakes for systemd and Redis (both have integration tests of their own).

Each scenario runs in one event loop, as the agent does: jobs run as background tasks, and
`agent.jobs.wait()` stands for "systemd finished them".
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import ClassVar, TypeVar

import pytest

from dqagent.agent.lifecycle import Agent, scale_by
from dqagent.core.policies import StepPolicy
from dqagent.core.units import ActiveState, UnitState
from dqagent.errors import BrokerError, SystemdTimeoutError
from dqagent.settings.config import parse_settings
from tests.unit.fakes import Clock, FakeDemandProbe, FakeUnits, RecordingNotifier
from tests.unit.logged import events

SETTINGS = parse_settings({"GUARD": "off", "MIN_PROCESSES": "1", "MAX_PROCESSES": "5", "CHECK_INTERVAL": "1",
                           "PROCESS_STARTUP_DELAY": "0", "GRACEFUL_SHUTDOWN_TIMEOUT": "1"})
T = TypeVar("T")


def FakeProbe(ready: int = 0, delayed: int = 0) -> FakeDemandProbe:
    """The broker fake with one queue `q`."""
    probe = FakeDemandProbe()
    probe.set_queue("q", ready=ready, delayed=delayed)
    return probe


def make(units: FakeUnits, probe: FakeDemandProbe, clock: Clock | None = None, **kw: object) -> Agent:
    return Agent(SETTINGS, units, probe, RecordingNotifier(), StepPolicy.from_settings(SETTINGS),
                 clock=clock or Clock(1000.0), **kw)  # type: ignore[arg-type]


def run(scenario: Callable[[], Awaitable[T]]) -> T:
    return asyncio.run(scenario())  # type: ignore[arg-type]


async def until(what: str, condition: Callable[[], object], timeout_s: float = 5.0) -> None:
    """Yield to the loop until `condition()` holds (the agent's own tasks run meanwhile); fail naming `what`."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not condition():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for: {what}")
        await asyncio.sleep(0.001)


def notified(agent: Agent) -> list[str]:
    return agent.notifier.sent  # type: ignore[attr-defined, no-any-return]


def status(agent: Agent) -> str:
    return [s for s in agent.notifier.sent if s.startswith("STATUS=")][-1]  # type: ignore[attr-defined]


def test_tick_scales_up_to_lowest_free_number_and_down_from_highest() -> None:
    units, probe = FakeUnits(running=[1, 3]), FakeProbe(ready=11)
    agent = make(units, probe)

    async def scenario() -> None:
        await agent.tick()  # 11 > 2 x 5
        await agent.jobs.wait()
        assert units.calls[-1] == ("start", ("dramatiq-worker@2.service",))
        probe.set_queue("q", ready=0)
        await agent.tick()
        await agent.jobs.wait()
        assert units.calls[-1] == ("stop", ("dramatiq-worker@3.service",))
        assert sorted(units.units) == [1, 2]

    run(scenario)


def test_a_draining_worker_blocks_neither_the_tick_nor_a_scale_up(caplog: pytest.LogCaptureFixture) -> None:
    units, probe = FakeUnits(running=[1, 2, 3]), FakeProbe(ready=0)
    agent = make(units, probe)
    caplog.set_level(logging.INFO)

    async def scenario() -> None:
        units.drain = asyncio.Event()  # the stopped worker takes its time
        await asyncio.wait_for(agent.tick(), 1)
        assert units.units[3].active is ActiveState.DEACTIVATING
        probe.set_queue("q", ready=100)  # a burst while it drains
        await asyncio.wait_for(agent.tick(), 1)
        assert units.calls[-1] == ("start", ("dramatiq-worker@4.service",))  # 3 is still held
        assert "1 stopping" in status(agent)
        units.drain.set()
        await agent.jobs.wait()
        assert sorted(units.units) == [1, 2, 4]

    run(scenario)
    assert [r.UNIT for r in events(caplog, "worker_stopped")] == ["dramatiq-worker@3.service"]  # type: ignore[attr-defined]


def test_an_operators_rolling_restart_is_neither_cancelled_nor_compensated() -> None:
    units, probe = FakeUnits(running=[1, 2, 3, 4]), FakeProbe(ready=15)  # 4 x 2.5 <= 15 <= 4 x 5: hold 4
    agent = make(units, probe)
    for n in (2, 3, 4):
        units.operator_job(n, "restart")

    async def scenario() -> None:
        await agent.tick()
        assert units.calls == []
        assert status(agent).startswith("STATUS=1 running of 4 wanted (3 starting)")
        probe.set_queue("q", ready=0)  # even a scale-down leaves the restarting units alone
        await agent.tick()
        await agent.jobs.wait()
        assert units.calls == [("stop", ("dramatiq-worker@1.service",))]

    run(scenario)


def test_a_crashed_worker_in_restart_sec_is_counted_as_coming(caplog: pytest.LogCaptureFixture) -> None:
    units, probe = FakeUnits(running=[1, 2, 3, 4]), FakeProbe(ready=15)
    agent = make(units, probe)
    units.crash(2)
    caplog.set_level(logging.INFO)

    async def scenario() -> None:
        for _ in range(3):
            await agent.tick()
        assert units.calls == []

    run(scenario)
    assert "3 running of 4 wanted (1 starting); dramatiq-worker@2 failing: exit-code, restarting" in status(agent)
    assert len(events(caplog, "worker_failed")) == 1  # once, not once per tick


def test_redis_error_keeps_workers_and_logs_once(caplog: pytest.LogCaptureFixture) -> None:
    units, probe = FakeUnits(running=[1, 2, 3]), FakeProbe()
    agent = make(units, probe)
    probe.error = BrokerError("redis redis://h:1/0: ConnectionError")
    caplog.set_level(logging.INFO)

    async def scenario() -> list[float]:
        delays = [await agent.tick() for _ in range(4)]
        probe.error = None
        await agent.tick()
        return delays

    delays = run(scenario)
    assert [c for c in units.calls if c[0] == "start"] == []  # never scales on unknown data
    assert delays == [2, 4, 8, 16]  # doubling, capped at max(CHECK_INTERVAL, 30 s)
    assert len(events(caplog, "redis_error")) == 1
    assert events(caplog, "redis_ok")


def test_a_crash_looping_start_backs_off_exponentially(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock(1000.0)
    units, probe = FakeUnits(running=[1], broken=[2, 3]), FakeProbe(ready=100)
    agent = make(units, probe, clock)
    caplog.set_level(logging.INFO)

    async def scenario() -> list[float]:
        attempts = []
        for _ in range(80):  # 80 s of 1 s checks
            before = len([c for c in units.calls if c[0] == "start"])
            await agent.tick()
            await agent.jobs.wait()
            if len([c for c in units.calls if c[0] == "start"]) > before:
                attempts.append(clock.now - 1000)
            clock.now += 1
        return attempts

    attempts = run(scenario)
    assert attempts == [0, 5, 15, 35, 75]  # 5 s doubling, not one start per check
    # Each start at the lowest free number, but not a 4th within 60 s of the same number (systemd's start limit,
    # dqagent.core.startlimit): @2 three times, then @3, then @2 again once its first start is 60 s old
    started = [c[1] for c in units.calls if c[0] == "start"]
    assert started == [(f"dramatiq-worker@{n}.service",) for n in (2, 2, 2, 3, 2)], started
    assert 2 not in units.units  # stopped in auto-restart so systemd's Restart= does not loop it
    assert len(events(caplog, "worker_failed")) == 2  # logged once per unit and distinct reason (@2, @3)
    assert "dramatiq-worker@2 failing: exit-code" in status(agent) and "next start in" in status(agent)
    assert status(agent).startswith("STATUS=1 running of 2 wanted")


def test_a_start_restarted_by_systemd_within_the_check_is_a_failed_start(caplog: pytest.LogCaptureFixture) -> None:
    units, probe = FakeUnits(running=[1]), FakeProbe(ready=100)
    units.flapping.add(2)
    agent = make(units, probe)
    caplog.set_level(logging.INFO)

    async def scenario() -> None:
        await agent.tick()
        await agent.jobs.wait()

    run(scenario)
    assert [r.RESULT for r in events(caplog, "worker_failed")] == ["restarted by systemd"]  # type: ignore[attr-defined]
    assert not events(caplog, "worker_started")
    assert units.calls[-1] == ("stop", ("dramatiq-worker@2.service",)) and 2 not in units.units
    assert agent.jobs.backoff.failures == 1


def test_a_failed_unit_is_logged_once_and_restarted_after_the_backoff(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock(1000.0)
    units, probe = FakeUnits(running=[1, 2]), FakeProbe(ready=10)  # 2 x 2.5 <= 10 <= 2 x 5: hold 2
    units.fail(2, "start-limit-hit")
    agent = make(units, probe, clock)
    caplog.set_level(logging.INFO)

    async def scenario() -> None:
        await agent.tick()  # 1 running: the policy holds 1, so nothing to start
        probe.set_queue("q", ready=6)  # 6 > 1 x 5
        await agent.tick()
        await agent.jobs.wait()

    run(scenario)
    assert ("reset", ("dramatiq-worker@2.service",)) in units.calls
    assert units.calls[-1] == ("start", ("dramatiq-worker@2.service",))
    assert [r.RESULT for r in events(caplog, "worker_failed")] == ["start-limit-hit"]  # type: ignore[attr-defined]
    assert events(caplog, "worker_recovered")


def test_a_stop_that_hits_timeout_stop_sec_is_a_warning_and_the_unit_is_reset(
        caplog: pytest.LogCaptureFixture) -> None:
    units, probe = FakeUnits(running=[1, 2]), FakeProbe(ready=0)
    units.ignore_term.add(2)
    agent = make(units, probe)
    caplog.set_level(logging.INFO)

    async def scenario() -> None:
        await agent.tick()
        await agent.jobs.wait()
        await agent.tick()

    run(scenario)
    warned = events(caplog, "worker_stop_timeout")
    assert len(warned) == 1 and warned[0].levelno == logging.WARNING
    assert warned[0].getMessage().startswith("stop of dramatiq-worker@2.service timed out after")
    assert not events(caplog, "worker_failed") and not events(caplog, "worker_stopped")
    assert ("reset", ("dramatiq-worker@2.service",)) in units.calls and 2 not in units.units


@pytest.mark.parametrize(("job", "under_systemd", "stopped"),
                         [("stop", True, True), ("restart", True, False), ("", True, False), ("", False, True)])
def test_shutdown_stops_workers_only_when_the_agent_is_stopped(job: str, under_systemd: bool, stopped: bool) -> None:
    units, probe = FakeUnits(running=[1, 2]), FakeProbe()
    units.job = job
    agent = make(units, probe, under_systemd=under_systemd)

    async def scenario() -> int:
        task = asyncio.create_task(agent.run())
        await until("READY=1", lambda: "READY=1" in notified(agent))
        agent.stop_requested.set()
        return await task

    assert run(scenario) == 0
    assert (units.units == {}) is stopped
    notes = agent.notifier.sent  # type: ignore[attr-defined]
    assert notes[0] == "READY=1" and "STOPPING=1" in notes


def test_shutdown_waits_for_draining_workers_but_not_for_an_operators_job() -> None:
    units, probe = FakeUnits(running=[1, 2, 3]), FakeProbe()
    units.operator_job(3, "restart")
    agent = make(units, probe, under_systemd=False)

    async def scenario() -> int:
        units.drain = asyncio.Event()
        task = asyncio.create_task(agent.run())
        await until("READY=1", lambda: "READY=1" in notified(agent))
        agent.stop_requested.set()
        await until("the stops under way", lambda: units.units[1].active is ActiveState.DEACTIVATING
                    and units.units[2].active is ActiveState.DEACTIVATING)
        assert not task.done()  # waits for the stops
        units.drain.set()
        return await task

    assert run(scenario) == 0
    assert list(units.units) == [3]


def test_adoption_does_not_wait_for_stops() -> None:
    units, probe = FakeUnits(running=[1, 2, 3]), FakeProbe()
    settings = parse_settings({"GUARD": "off", "MIN_PROCESSES": "1", "MAX_PROCESSES": "2", "CHECK_INTERVAL": "1",
                               "PROCESS_STARTUP_DELAY": "0", "GRACEFUL_SHUTDOWN_TIMEOUT": "600"})
    agent = Agent(settings, units, probe, RecordingNotifier(), StepPolicy.from_settings(settings),
                  clock=Clock(1000.0), under_systemd=False)

    async def scenario() -> None:
        units.drain = asyncio.Event()  # @3 takes GRACEFUL_SHUTDOWN_TIMEOUT to drain
        task = asyncio.create_task(agent.run())
        await until("READY=1", lambda: "READY=1" in notified(agent))
        assert notified(agent)[0] == "READY=1"
        assert units.units[3].active is ActiveState.DEACTIVATING
        agent.stop_requested.set()
        units.drain.set()
        await task

    run(scenario)


def test_watchdog_pings_only_while_the_loop_makes_progress() -> None:
    clock = Clock(1000.0)
    agent = make(FakeUnits(), FakeProbe(), clock, watchdog_s=0.01)

    async def scenario() -> list[str]:
        agent._progress_deadline = clock.now + 5
        task = asyncio.create_task(agent._watchdog())
        await until("a ping", lambda: "WATCHDOG=1" in notified(agent))
        alive = list(notified(agent))
        clock.now += 10  # the loop missed its deadline: hung
        notified(agent).clear()
        await asyncio.sleep(0.05)  # an absence takes time to show: five watchdog periods without a ping
        task.cancel()
        return [*alive, "--", *agent.notifier.sent]  # type: ignore[attr-defined]

    sent = run(scenario)
    split = sent.index("--")
    assert "WATCHDOG=1" in sent[:split]
    assert "WATCHDOG=1" not in sent[split:]


def test_delayed_messages_keep_one_consumer_when_min_is_zero() -> None:
    settings = parse_settings({"GUARD": "off", "MIN_PROCESSES": "0", "MAX_PROCESSES": "5", "CHECK_INTERVAL": "1",
                               "PROCESS_STARTUP_DELAY": "0"})
    units, probe = FakeUnits(running=[1]), FakeProbe(delayed=3)
    agent = Agent(settings, units, probe, RecordingNotifier(), StepPolicy.from_settings(settings), clock=Clock(1000.0))

    async def scenario() -> None:
        await agent.tick()
        await agent.jobs.wait()
        assert list(units.units) == [1]  # the step rule alone would stop it (0 < 1 x 2.5)
        probe.set_queue("q", delayed=0)
        await agent.tick()
        await agent.jobs.wait()
        assert units.units == {}

    run(scenario)


def test_refused_requests_are_logged_as_failures_not_successes(caplog: pytest.LogCaptureFixture) -> None:
    units, probe = FakeUnits(running=[1, 2, 3]), FakeProbe(ready=0)
    units.refuse = "org.freedesktop.DBus.Error.AccessDenied"
    caplog.set_level(logging.INFO)
    agent = make(units, probe)

    async def scenario() -> None:
        await agent.tick()
        await agent.jobs.wait()

    run(scenario)
    assert events(caplog, "worker_stop_failed") and not events(caplog, "worker_stopped")


def test_refused_reset_counts_as_a_failed_start_and_backs_off(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock(1000.0)
    units, probe = FakeUnits(running=[1]), FakeProbe(ready=100)
    units.fail(2, "exit-code")
    units.refuse = "org.freedesktop.DBus.Error.AccessDenied"
    caplog.set_level(logging.INFO)
    agent = make(units, probe, clock)

    async def scenario() -> None:
        await agent.tick()  # must not raise: the loop keeps running
        await agent.jobs.wait()

    run(scenario)
    assert any("AccessDenied" in str(r.RESULT) for r in events(caplog, "worker_failed"))  # type: ignore[attr-defined]
    assert events(caplog, "start_backoff")


def test_stop_signal_asks_systemd_for_time_at_once() -> None:
    agent = make(FakeUnits(), FakeProbe())
    agent._on_stop_signal()
    sent = agent.notifier.sent  # type: ignore[attr-defined]
    assert sent and sent[0].startswith("EXTEND_TIMEOUT_USEC=") and agent.stop_requested.is_set()


def test_manual_scale_down_leaves_a_unit_with_an_operators_job() -> None:
    units = FakeUnits(running=[1, 2, 3])
    units.operator_job(3, "reload", ActiveState.RELOADING, "reload")
    settings = parse_settings({"GUARD": "off", "MIN_PROCESSES": "0", "MAX_PROCESSES": "5",
                               "PROCESS_STARTUP_DELAY": "0"})
    report = run(lambda: scale_by(units, settings, -3))
    assert report.current == 3 and report.target == 0
    assert report.lines == ("dramatiq-worker@2.service: stopped (done)", "dramatiq-worker@1.service: stopped (done)")
    assert list(units.units) == [3]


def test_manual_scale_up_reports_a_failing_start() -> None:
    units = FakeUnits(running=[1], broken=[2])
    settings = parse_settings({"GUARD": "off", "MIN_PROCESSES": "0", "MAX_PROCESSES": "5",
                               "PROCESS_STARTUP_DELAY": "0"})
    report = run(lambda: scale_by(units, settings, 2))
    assert report.failed == 1 and not report.refused
    assert report.lines[0] == "dramatiq-worker@3.service: started (pid 1003)" or \
        report.lines[1] == "dramatiq-worker@3.service: started (pid 1003)"
    assert any(line.startswith("dramatiq-worker@2.service: failed (activating/auto-restart") for line in report.lines)


def test_a_unit_crash_looping_under_restart_is_not_logged_as_recovered_each_cycle(
        caplog: pytest.LogCaptureFixture) -> None:
    settings = parse_settings({"GUARD": "off", "MIN_PROCESSES": "1", "MAX_PROCESSES": "5", "CHECK_INTERVAL": "1",
                               "PROCESS_STARTUP_DELAY": "5"})
    units, probe = FakeUnits(running=[1, 2]), FakeProbe(ready=7)  # 2 x 2.5 <= 7 <= 2 x 5: hold 2
    wall = Clock(1000.0)
    agent = Agent(settings, units, probe, RecordingNotifier(), StepPolicy.from_settings(settings),
                  clock=Clock(1000.0), wallclock=wall)
    caplog.set_level(logging.INFO)

    async def scenario() -> None:
        for _ in range(3):
            units.crash(2)
            await agent.tick()
            units.run(2)  # systemd's Restart= brought it back a moment ago
            units.units[2].active_enter_us = int(wall.now * 1e6)
            wall.now += 1
            await agent.tick()
        wall.now += 5  # it stays up
        await agent.tick()

    run(scenario)
    assert len(events(caplog, "worker_failed")) == 1
    assert len(events(caplog, "worker_recovered")) == 1
    assert units.calls == []


def test_target_reads_every_second_at_zero_and_asks_for_a_worker_on_the_first_read_that_sees_work() -> None:
    # MIN_PROCESSES=0 and an empty pool: the next read is 1 s away (not DEMAND_POLL_INTERVAL),
    # and the first read that sees a message starts a worker
    from dqagent.core.policies import TargetPolicy
    from dqagent.settings.workercmd import worker_shape

    s = parse_settings({"GUARD": "off", "MIN_PROCESSES": "0", "MAX_PROCESSES": "5",
                        "CHECK_INTERVAL": "60", "SCALING_POLICY": "target",
                        "DEMAND_POLL_INTERVAL": "5", "PROCESS_STARTUP_DELAY": "0", "GRACEFUL_SHUTDOWN_TIMEOUT": "1"})
    units, probe = FakeUnits(running=[]), FakeProbe(ready=0)
    agent = Agent(s, units, probe, RecordingNotifier(), TargetPolicy.from_settings(s, worker_shape("x", 1)),
                  clock=Clock(1000.0))

    async def scenario() -> None:
        assert await agent.tick() == 1.0
        assert units.calls == []
        probe.set_queue("q", ready=1)
        assert await agent.tick() == 1.0
        await agent.jobs.wait()
        assert units.calls[-1] == ("start", ("dramatiq-worker@1.service",))

    run(scenario)


def test_systemd_not_answering_a_tick_is_a_timeout_not_a_refusal(caplog: pytest.LogCaptureFixture) -> None:
    units = FakeUnits(running=[1])
    agent = make(units, FakeProbe(ready=1), under_systemd=False)
    caplog.set_level(logging.INFO)
    reads = 0
    read = units.worker_states

    async def busy_systemd(brief: Sequence[str] | None = None) -> list[UnitState]:
        nonlocal reads
        reads += 1
        if reads in (2, 3):  # the first read is the adoption; then two ticks time out
            raise SystemdTimeoutError("org.freedesktop.DBus.Error.NoReply",
                                      "systemd did not answer ListUnitsByPatterns within 25s (DBUS_TIMEOUT)")
        if reads == 5:
            agent.stop_requested.set()
        return await read(brief)

    async def no_pause(delay_s: float, bus_lost: object) -> None:
        await asyncio.sleep(0)

    units.worker_states = busy_systemd  # type: ignore[method-assign]
    agent._pause = no_pause  # type: ignore[method-assign,assignment]
    assert run(agent.run) == 0
    timeouts = events(caplog, "systemd_timeout")
    assert len(timeouts) == 1 and timeouts[0].levelno == logging.WARNING  # once per outage
    assert "did not answer in time" in timeouts[0].getMessage() and "ListUnitsByPatterns" in timeouts[0].getMessage()
    assert not events(caplog, "systemd_error")  # not "systemd refused a request"
    assert len(events(caplog, "systemd_ok")) == 1
    assert any(s.startswith("STATUS=systemd not answering") for s in agent.notifier.sent)  # type: ignore[attr-defined]


def test_with_systemds_signals_a_manual_scale_judges_each_job_without_reading_the_unit_again() -> None:
    """PROCESS_STARTUP_DELAY=0: MainPID/NRestarts/Result sent before JobRemoved are the check; a
    start without a MainPID (crashed at once) or a stop that did not end cleanly is still read."""

    class Counting(FakeUnits):
        reads: ClassVar[list[str]] = []  # started_states reads each unit through unit_state too

        async def unit_state(self, unit: str, brief: bool = False) -> UnitState:
            self.reads.append(unit)
            return await super().unit_state(unit, brief)

    settings = parse_settings({"GUARD": "off", "MIN_PROCESSES": "0", "MAX_PROCESSES": "5",
                               "PROCESS_STARTUP_DELAY": "0"})
    units = Counting(running=[1], broken=[3])
    units.signals = True
    up = run(lambda: scale_by(units, settings, 2))
    assert sorted(up.lines) == ["dramatiq-worker@2.service: started (pid 1002)",
                                "dramatiq-worker@3.service: failed (activating/auto-restart, result=exit-code, "
                                "restarts=1 within the start check)"]
    assert units.reads == ["dramatiq-worker@3.service"]  # only the one without a MainPID
    units.reads.clear()
    units.ignore_term.add(2)
    down = run(lambda: scale_by(units, settings, -3))
    assert ("dramatiq-worker@1.service: stopped (done)" in down.lines
            and "dramatiq-worker@2.service: stopped (done)" in down.lines)
    assert units.reads == ["dramatiq-worker@2.service"]  # Result=timeout: read, then reset-failed
    assert ("reset", ("dramatiq-worker@2.service",)) in units.calls and not units.units

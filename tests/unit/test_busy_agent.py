"""The loop with the workers' reports (fakes for systemd and Redis; report files in a temporary directory, as
`dqagent.dramatiq.WorkerReport` writes them; tests/integration/test_busy_workers.py has the real ones): the
scale-down stops the idle worker and says so, a hung worker is restarted as the same unit, a busy one is not."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from dqagent.agent.lifecycle import Agent
from dqagent.core.policies import StepPolicy
from dqagent.settings.config import parse_settings
from tests.unit.fakes import FakeUnits, RecordingNotifier
from tests.unit.logged import events
from tests.unit.test_agent_loop import SETTINGS, Clock, FakeProbe, run


def report(root: Path, instance: int, running: int, prefetched: int = 0, beat: float = 1e9) -> None:
    d = root / str(instance)
    d.mkdir(parents=True, exist_ok=True)
    (d / "100.json").write_text(json.dumps({"pid": 100, "running": running, "prefetched": prefetched, "done": 0,
                                            "heartbeat": beat, "threads": 2}))


def agent(units: FakeUnits, ready: int, root: Path, clock: Clock, **settings: str) -> Agent:
    s = parse_settings({"GUARD": "off", "MIN_PROCESSES": "1", "MAX_PROCESSES": "5", "CHECK_INTERVAL": "1",
                        "PROCESS_STARTUP_DELAY": "0", "GRACEFUL_SHUTDOWN_TIMEOUT": "1", **settings})
    a = Agent(s, units, FakeProbe(ready=ready), RecordingNotifier(), StepPolicy.from_settings(s), clock=clock)
    a.report_root = root
    return a


def test_the_scale_down_stops_the_idle_worker_not_the_highest(tmp_path: Path,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    units = FakeUnits(running=[1, 2, 3])
    report(tmp_path, 1, 2)
    report(tmp_path, 2, 0)  # idle
    report(tmp_path, 3, 1, 4)
    a = agent(units, 2, tmp_path, Clock(), MIN_PROCESSES="2")  # 2 < 3 x 2.5: one goes
    caplog.set_level(logging.INFO)

    async def scenario() -> None:
        await a.tick()
        await a.jobs.wait()

    run(scenario)
    assert ("stop", ("dramatiq-worker@2.service",)) in units.calls
    (down,) = events(caplog, "scale_down")
    assert down.STOP_UNITS == "2" and down.STOP_WHY == "stops @2 (idle)" and down.ALL_BUSY == 0  # type: ignore[attr-defined]
    assert "stops @2 (idle)" in down.getMessage()
    snap = a.latest
    assert snap is not None and dict(snap.default.activity) == {"busy": 2, "idle": 1, "unreported": 0}


def test_without_reports_the_highest_number_stops_as_before(tmp_path: Path) -> None:
    units = FakeUnits(running=[1, 2, 3])
    a = agent(units, 2, tmp_path, Clock(), MIN_PROCESSES="2")

    async def scenario() -> None:
        await a.tick()
        await a.jobs.wait()

    run(scenario)
    assert ("stop", ("dramatiq-worker@3.service",)) in units.calls


def test_a_hung_worker_is_restarted_as_the_same_unit_a_beating_busy_one_never(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    units, clock = FakeUnits(running=[1, 2]), Clock()
    a = agent(units, 6, tmp_path, clock, MIN_PROCESSES="2", MAX_PROCESSES="2", WORKER_HUNG_AFTER="10")
    caplog.set_level(logging.INFO)

    async def scenario() -> None:
        for t in range(15):
            clock.now = 1000.0 + t
            report(tmp_path, 1, 2, beat=1e9 + t)  # busy, beating
            report(tmp_path, 2, 1, beat=1e9 + min(t, 2))  # frozen from t=2
            await a.tick()
            await a.jobs.wait()

    run(scenario)
    hung = events(caplog, "worker_hung")
    assert [r.UNIT for r in hung] == ["dramatiq-worker@2.service"]  # type: ignore[attr-defined]
    assert [c for c in units.calls if c[0] in ("stop", "start")] == [
        ("stop", ("dramatiq-worker@2.service",)), ("start", ("dramatiq-worker@2.service",))]
    assert events(caplog, "worker_restarted")
    assert dict(a.counters.frozen().hung_restarts) == {"default": 1}


def test_settings_name_the_range_of_worker_hung_after() -> None:
    from dqagent.errors import ConfigError

    with pytest.raises(ConfigError, match=r"WORKER_HUNG_AFTER.*expected seconds in \[5, 604800\], or empty for off"):
        parse_settings({"WORKER_HUNG_AFTER": "1"})
    assert parse_settings({}).worker_hung_after_s is None
    assert SETTINGS.worker_hung_after_s is None

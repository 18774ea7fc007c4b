"""PREDICTIVE through the agent's loop (systemd and Redis faked; the real bench: tests/integration/test_predictive.py):
the forecast is asked before each step and told after it, `on` pre-warms a regular burst, `shadow` only says what
it would have done, the learning survives a restart through the state file (a damaged one is reported and
replaced), and the decision line, the snapshot, /metrics and the status document show it."""

from __future__ import annotations

import asyncio
import json
import logging
import os
from pathlib import Path

import pytest

from dqagent.agent.forecasting import read_report, state_path
from dqagent.agent.lifecycle import Agent
from dqagent.agent.pools import policy_for
from dqagent.agent.statusview import public_document
from dqagent.report.metrics import families
from dqagent.settings.config import Settings, parse_settings
from dqagent.settings.pools import Pool
from tests.unit.fakes import FakeDemandProbe, RecordingNotifier
from tests.unit.logged import events
from tests.unit.test_agent_loop import Clock
from tests.unit.test_schedule_agent import SlowStarts  # (StartUnit takes 1.5 s: the measured lead)

T0 = 1_800_000_000.0  # wall clock at t = 0 (a Friday, 08:00 UTC)
PERIOD = 60
BURST = 40


def settings(mode: str) -> Settings:
    return parse_settings({"GUARD": "off", "MIN_PROCESSES": "1", "MAX_PROCESSES": "6", "SCALING_POLICY": "target",
                           "TARGET_PER_WORKER": "10", "SCALE_DOWN_WINDOW": "0", "DEMAND_POLL_INTERVAL": "2",
                           "CHECK_INTERVAL": "60", "PROCESS_STARTUP_DELAY": "0", "GRACEFUL_SHUTDOWN_TIMEOUT": "1",
                           "DRAMATIQ_QUEUE_NAME": "q", "PREDICTIVE": mode})


def waiting(t: float) -> int:
    """A burst of BURST messages at each multiple of PERIOD, drained linearly within 20 s."""
    phase = t % PERIOD
    return max(0, BURST - int(phase * BURST / 20)) if phase < 20 else 0


class Run:
    """An agent checking every 2 s, or sooner when it asks (fake clocks), while bursts come every PERIOD s."""

    def __init__(self, mode: str, directory: Path | None = None, start: float = 0.0) -> None:
        self.clock, self.wall = Clock(), Clock()
        self.units = SlowStarts(self.clock)
        self.units.run(1)
        self.probe = FakeDemandProbe()
        self.t = start
        s = settings(mode)
        self.agent = Agent(s, self.units, self.probe, RecordingNotifier(), policy_for(s),
                           clock=self.clock, wallclock=self.wall, pause_dir=directory)
        #: (t, workers running after the check)
        self.seen: list[tuple[float, int]] = []

    async def until(self, end: float) -> None:
        while self.t < end:
            self.clock.now, self.wall.now = 1000.0 + self.t, T0 + self.t
            self.probe.set_queue("q", ready=waiting(self.t))
            delay = await self.agent.tick()
            await self.agent.jobs.wait()
            self.seen.append((self.t, sum(1 for s in await self.units.worker_states() if s.running)))
            self.t += min(2.0, max(0.5, delay))  # (the agent's next read: 1 s while a forecast batch is near)

    def before_burst(self, k: int) -> int:
        """Workers running at the last check before burst `k` (at k x PERIOD)."""
        return [n for t, n in self.seen if t < k * PERIOD][-1]


def test_on_pre_warms_before_a_learnt_burst(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    run = Run("on")
    asyncio.run(run.until(8 * PERIOD))
    assert run.before_burst(1) == 1  # nothing learnt yet: the reactive policy alone
    assert run.before_burst(7) >= 4  # learnt: BURST / TARGET_PER_WORKER workers before the burst comes
    assert dict(run.agent.counters.frozen().scale_actions)[("default", "up", "forecast")] >= 1
    lines = [vars(r) for r in events(caplog, "decision")]
    assert {line["FORECAST_MODE"] for line in lines} == {"on"}
    assert any(line["FORECAST_WOULD"] != "" for line in lines)
    trusted = [vars(r) for r in events(caplog, "forecast_trusted")]
    assert [(r["FORECAST_MODE"], r["FORECAST_PERIOD_S"]) for r in trusted] == [("on", "60")]
    assert float(trusted[0]["FORECAST_ERROR"]) <= 0.5 and "FORECAST_ERROR_DAY" in trusted[0]
    aside = [vars(r) for r in events(caplog, "forecast_aside")]
    assert aside and aside[0]["FORECAST_ASIDE"] == "no rhythm learnt yet"
    assert events(caplog, "forecast_would") == []  # (shadow only)


def test_shadow_only_says_what_it_would_have_done(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    run = Run("shadow")
    asyncio.run(run.until(8 * PERIOD))
    assert run.before_burst(7) == 1  # nothing started early
    assert ("default", "up", "forecast") not in dict(run.agent.counters.frozen().scale_actions)
    would = events(caplog, "forecast_would")
    assert would and all(int(vars(r)["FORECAST_WOULD"]) >= 4 for r in would)
    # Once per change, not per check: at most one per burst (pre-warm, then hold), not one per 2 s check
    assert len(would) <= 2 * 8
    assert {vars(r)["FORECAST_MODE"] for r in events(caplog, "decision")} == {"shadow"}


def test_the_learning_survives_a_restart(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    first = Run("on", tmp_path)
    asyncio.run(first.until(7 * PERIOD))
    asyncio.run(first.agent._shutdown())  # (not under systemd: stops its workers, saves the state)
    path = state_path(tmp_path, "default")
    assert os.stat(path).st_mode & 0o777 == 0o644
    report = read_report(tmp_path, "default")
    assert report is not None and report.period_s == PERIOD and report.trusted
    assert report.at_s == T0 + first.seen[-1][0]  # saved at the stop, as of the last check
    # The next agent, 30 s later (a restart): it forecasts the next burst without learning three periods again
    second = Run("on", tmp_path, start=7 * PERIOD + 30)
    asyncio.run(second.until(8 * PERIOD))
    assert [vars(r)["PATH"] for r in events(caplog, "forecast_restored")] == [str(path)]
    assert second.before_burst(8) >= 4
    # Without the file, the same restart is reactive
    fresh = Run("on", tmp_path / "none", start=7 * PERIOD + 30)
    (tmp_path / "none").mkdir()
    asyncio.run(fresh.until(8 * PERIOD))
    assert fresh.before_burst(8) == 1


@pytest.mark.parametrize("content", ["{not json", json.dumps({"version": 1, "pool": "other"}),
                                     json.dumps({"version": 1, "pool": "default", "forecaster": {"version": 9}})])
def test_a_damaged_or_foreign_state_file_is_reported_and_replaced(tmp_path: Path, content: str,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    path = state_path(tmp_path, "default")
    path.write_text(content)
    run = Run("shadow", tmp_path)
    asyncio.run(run.until(9))
    damaged = events(caplog, "forecast_state_damaged")
    assert len(damaged) == 1 and vars(damaged[0])["PATH"] == str(path)
    assert len(run.seen) == 5  # the agent checked on
    assert json.loads(path.read_text())["pool"] == "default"  # replaced at the first save


def test_an_unwritable_state_directory_is_logged_not_fatal(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    run = Run("on", tmp_path / "missing")
    asyncio.run(run.until(10))
    assert events(caplog, "forecast_state_unsaved")
    assert run.seen[-1][0] >= 8  # the agent checked on


def test_metrics_status_and_reload(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    run = Run("shadow")
    asyncio.run(run.until(7 * PERIOD))
    snap = run.agent.latest
    assert snap is not None
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for m in families(snap) for s in m.samples}
    assert samples[("dqagent_forecast_period_seconds", (("pool", "default"),))] == PERIOD
    assert samples[("dqagent_forecast_trusted", (("mode", "shadow"), ("pool", "default")))] == 1
    assert ("dqagent_forecast_error_ratio", (("pool", "default"), ("window", "recent"))) in samples
    assert ("dqagent_forecast_floor_workers", (("pool", "default"),)) in samples
    doc = public_document(snap, run.agent.s, (Pool("default", run.agent.s),))
    f = doc["pools"]["default"]["forecast"]
    assert (f["mode"], f["state"], f["period_s"]) == ("shadow", "trusted", PERIOD)
    assert f["error_day"] is not None and f["as_of"] is not None
    # A reload to off: the forecaster is dropped, the snapshot and /metrics lose it, the status says off
    run.agent._apply_pools((Pool("default", settings("off")),), {"default": run.agent.policy})
    asyncio.run(run.until(7 * PERIOD + 4))
    snap = run.agent.latest
    assert snap is not None and snap.default.forecast is None
    assert not [m for m in families(snap) if m.name.startswith("dqagent_forecast")]
    assert public_document(snap, run.agent.s, (Pool("default", run.agent.s),))["forecast"]["state"] == "off"


def test_dqagent_status_reads_what_the_agent_saved(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`dqagent status` (any user) shows the forecast from the agent's state file, else the mode and why not."""
    from dqagent.cli.status import _read_forecast
    from dqagent.cli.status_text import _forecast_lines
    from dqagent.report.statusdoc import forecast_report

    monkeypatch.setenv("DQAGENT_STATE_DIR", str(tmp_path))
    pool = Pool("default", settings("shadow"))
    unknown = forecast_report(pool.settings, _read_forecast(pool))
    assert unknown["state"] == "unknown" and "not readable yet" in unknown["why"]
    assert _forecast_lines(unknown)[0].startswith("forecast (PREDICTIVE=shadow): unknown: ")
    run = Run("shadow", tmp_path)
    asyncio.run(run.until(7 * PERIOD))
    run.agent.forecasts.save_all()
    seen = forecast_report(pool.settings, _read_forecast(pool))
    assert (seen["state"], seen["period_s"]) == ("trusted", PERIOD)
    line = _forecast_lines(seen)[0]
    assert line.startswith("forecast (PREDICTIVE=shadow): trusted; error ") and "period 60s" in line
    assert _forecast_lines(forecast_report(settings("off"), None)) == []

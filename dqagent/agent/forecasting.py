"""PREDICTIVE on the agent: each pool's forecaster between checks, its state file, and what it tells operators.

Each pool with PREDICTIVE=shadow or on keeps a `dqagent.core.predictor.Predicting` on the host's local time
zone (its daily and weekly profile follows the clock operators read). At a check the loop asks `forecast()`
for the step's input before deciding (the forecaster first learns what the check read) and calls `after()`
once the step has decided (the forecast a lead ahead is kept to be scored, and the changes operators want to
see are logged). Both use the wall clock, as the simulator does.

State: `forecast-<pool>.json` in the agent's StateDirectory (/var/lib/dqagent/agent), 0644 so that
`dqagent status` can show its `report` part to any user. Written whole (a temporary file, then a rename) at
most every SAVE_EVERY_S, at once when the forecast is trusted or steps aside, and at a reload and the agent's
stop; read when the pool's forecaster is made (at start, or when a reload turns PREDICTIVE on). A restart or
a reboot therefore forgets at most SAVE_EVERY_S of learning, and the forecaster treats the time the agent was
down as a gap. A damaged or foreign file is reported (`forecast_state_damaged`) and the forecaster starts
afresh (its next save replaces the file): learning again costs a few periods, a crash would cost the pools.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dqagent.core.forecast import Forecaster
from dqagent.core.prediction import Forecast, ForecastReport, Mode
from dqagent.core.predictor import Predicting
from dqagent.report.logs import event
from dqagent.settings.schedule import zone_for

if TYPE_CHECKING:
    from dqagent.agent.pools import PoolRun
    from dqagent.core.step import Check, Observed, Rules

log = logging.getLogger("dqagent.agent.loop")

#: Longest time between two saves of a pool's state while the agent runs.
SAVE_EVERY_S = 300.0
#: Format of the state file (the forecaster's own state has its own version inside).
VERSION = 1


def state_path(directory: Path, pool: str) -> Path:
    return directory / f"forecast-{pool}.json"


def load(directory: Path, pool: str) -> dict[str, Any] | None:
    """A pool's state file as JSON; None when there is none. Raises ValueError (also for OSError) when the
    file cannot be read or is not this pool's state."""
    path = state_path(directory, pool)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"cannot read it: {exc}") from None
    data = json.loads(text)  # (json.JSONDecodeError is a ValueError)
    if not isinstance(data, dict) or data.get("version") != VERSION or data.get("pool") != pool:
        raise ValueError(f"not pool {pool}'s forecast state (version {VERSION})")
    return data


def read_report(directory: Path, pool: str) -> ForecastReport | None:
    """The pool's report as the agent last saved it (for `dqagent status`); None: no file, or unreadable."""
    try:
        data = load(directory, pool)
        return None if data is None else ForecastReport.from_json(data["report"])
    except (ValueError, KeyError, TypeError):
        return None


@dataclass(slots=True)
class PoolForecast:
    """One pool's forecaster and what the agent last told operators about it."""

    predicting: Predicting
    report: ForecastReport | None = None
    #: Trusted at the last check (None: no check yet); the shadow floor last logged as `forecast_would`.
    trusted: bool | None = None
    would: int | None = None
    #: Monotonic seconds of the last save (-inf: never).
    saved_s: float = -math.inf


class Forecasts:
    """Every pool's forecaster (only pools with PREDICTIVE != off), kept in `directory` (None: memory only)."""

    def __init__(self, directory: Path | None, clock: Callable[[], float], wallclock: Callable[[], float]) -> None:
        self.directory = directory
        self.clock = clock
        self.wallclock = wallclock
        self.pools: dict[str, PoolForecast] = {}

    def sync(self, runs: Mapping[str, PoolRun]) -> None:
        """Follow the pools' PREDICTIVE (a reload may change it): make the forecasters newly on (from their state
        files), set each one's mode, save and forget those now off or removed."""
        for name in list(self.pools):
            run = runs.get(name)
            if run is None or run.retiring or Mode(run.s.predictive) is Mode.OFF:
                self.save(name)
                del self.pools[name]
        for name, run in runs.items():
            mode = Mode(run.s.predictive)
            if mode is Mode.OFF or run.retiring:
                continue
            if name in self.pools:
                self.pools[name].predicting.mode = mode
            else:
                self.pools[name] = PoolForecast(Predicting(mode, self._restore(name)))

    def _restore(self, pool: str) -> Forecaster:
        """The pool's forecaster from its state file; a fresh one when there is none or it is damaged."""
        zone = zone_for("")
        if self.directory is None:
            return Forecaster(zone)
        try:
            data = load(self.directory, pool)
            if data is None:
                return Forecaster(zone)
            forecaster = Forecaster.from_dict(data["forecaster"], zone)
        except (ValueError, KeyError, TypeError) as exc:
            path = state_path(self.directory, pool)
            log.warning("pool %s: forecast state %s is damaged or not dqagent's (%s): learning afresh", pool, path,
                        exc, extra=event("forecast_state_damaged", dqagent_pool=pool, path=str(path), error=str(exc)))
            return Forecaster(zone)
        log.info("pool %s: forecast state restored from %s (%d buckets of recent history)", pool,
                 state_path(self.directory, pool), len(forecaster.recent),
                 extra=event("forecast_restored", dqagent_pool=pool, path=str(state_path(self.directory, pool))))
        return forecaster

    def forecast(self, pool: str, rules: Rules, observed: Observed) -> Forecast | None:
        """The step's rule 3b input for this check (None: PREDICTIVE=off); learns what the check read first."""
        p = self.pools.get(pool)
        return None if p is None else p.predicting.forecast(rules, observed, self.wallclock())

    def after(self, pool: str, observed: Observed, forecast: Forecast | None, check: Check) -> None:
        """After the pool's step: keep the forecast to be scored, report, log the changes, save when due."""
        p = self.pools.get(pool)
        predicted = check.predicted
        if p is None or forecast is None or predicted is None:
            return
        wall = self.wallclock()
        p.predicting.learn(observed, wall, forecast.lead_s)
        f = p.predicting.forecaster
        trusted = not predicted.aside
        p.report = ForecastReport(predicted.mode, trusted, predicted.aside, predicted.error, f.error_day(wall),
                                  f.period.seconds if f.period is not None else None, predicted.floor,
                                  predicted.would, wall)
        changed = trusted != p.trusted
        if changed:
            self._trust_changed(pool, p, p.report)
        p.trusted = trusted
        if predicted.mode is Mode.SHADOW and predicted.would != p.would and predicted.would is not None:
            log.info("pool %s: PREDICTIVE=shadow would raise the target from %d to %d workers (forecast %s "
                     "outstanding within %.0f s, %s within %.0f s)", pool, check.decision.target, predicted.would,
                     _count(forecast.ahead), forecast.lead_s, _count(forecast.back), forecast.hold_s,
                     extra=event("forecast_would", dqagent_pool=pool, workers=check.seen.census.pool,
                                 target=check.decision.target, forecast_would=predicted.would,
                                 forecast_error=_ratio(predicted.error)))
        p.would = predicted.would
        if changed or self.clock() - p.saved_s >= SAVE_EVERY_S:
            self.save(pool)

    def _trust_changed(self, pool: str, p: PoolForecast, r: ForecastReport) -> None:
        period = f"a period of {r.period_s:.0f} s" if r.period_s is not None else "the daily and weekly profile"
        fields = dict(dqagent_pool=pool, forecast_mode=str(r.mode), forecast_error=_ratio(r.error_recent),
                      forecast_error_day=_ratio(r.error_day),
                      forecast_period_s="" if r.period_s is None else f"{r.period_s:.0f}")
        if r.trusted:
            acts = "pre-warms and holds workers" if r.mode is Mode.ON else "reports what it would do"
            log.info("pool %s: forecast trusted (recent error %s, %s over the last day, %s): PREDICTIVE=%s %s", pool,
                     _percent(r.error_recent), _percent(r.error_day), period, r.mode, acts,
                     extra=event("forecast_trusted", **fields))
            return
        level = logging.WARNING if p.trusted else logging.INFO  # (stepping aside after trust is news)
        log.log(level, "pool %s: forecast steps aside (%s; %s over the last day): the policy alone decides", pool,
                r.why, _percent(r.error_day), extra=event("forecast_aside", **fields, forecast_aside=r.why))

    def report(self, pool: str) -> ForecastReport | None:
        p = self.pools.get(pool)
        return None if p is None else p.report

    def save_all(self) -> None:
        for name in self.pools:
            self.save(name)

    def save(self, pool: str) -> None:
        """The pool's state file, replaced whole; a failure is logged (the learning then ends with the agent)."""
        p = self.pools.get(pool)
        if p is None or self.directory is None:
            return
        p.saved_s = self.clock()
        path = state_path(self.directory, pool)
        tmp = path.with_name(f".{path.name}.tmp")
        data = {"version": VERSION, "pool": pool, "saved_at": self.wallclock(),
                "report": p.report.to_json() if p.report is not None else None,
                "forecaster": p.predicting.forecaster.to_dict()}
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                os.fchmod(out.fileno(), 0o644)
                json.dump(data, out, separators=(",", ":"))
            os.replace(tmp, path)
        except OSError as exc:
            with contextlib.suppress(OSError):
                tmp.unlink()
            log.error("pool %s: cannot save the forecast state in %s (%s): a restart would forget its learning",
                      pool, path, exc, extra=event("forecast_state_unsaved", dqagent_pool=pool, path=str(path),
                                                   error=str(exc)))


def _ratio(error: float | None) -> str:
    return "" if error is None else f"{error:.3f}"


def _percent(error: float | None) -> str:
    return "unknown" if error is None else f"{error:.0%}"


def _count(value: float | None) -> str:
    return "none" if value is None else f"{value:.0f}"

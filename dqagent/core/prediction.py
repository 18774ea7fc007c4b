"""PREDICTIVE: the forecast as a floor under the reactive target, pure (rule 3b of `dqagent.core.step`).

The floor only ever adds: it raises the policy's target to the workers the forecast count needs, never lowers
it, and stays within [MIN, MAX] (the schedule, a pause, the host budget and the guard still apply after it).

- **Pre-warm**: the highest forecast count from now until one measured start-up ahead (`Forecast.ahead`) asks
  for ceil(count / per worker) workers, started now so they are running when the work comes.
- **Hold through a gap**: while the forecast says work comes back within the hold horizon (`Forecast.back`),
  the workers running now that it needs are kept (a stop and a restart would cost a start-up each, and the
  wait of the work that meets a cold pool).

It acts only in mode `on` and only while the forecast is trusted: the recent error is known and at most
`TRUST_ERROR`. Otherwise it steps aside (`Predicted.aside` says why). In mode `shadow` it computes the same and
reports what it would have done (`Predicted.would`), never acting.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from dqagent.core.policies import Decision, Policy, StepPolicy, TargetPolicy

#: The recent error (weighted absolute percentage error) above which the forecast steps aside.
TRUST_ERROR = 0.5


class Mode(StrEnum):
    OFF = "off"
    SHADOW = "shadow"
    ON = "on"


@dataclass(frozen=True, slots=True)
class Forecast:
    """What the forecaster says at one check (`dqagent.core.forecast.Forecaster`)."""

    mode: Mode
    #: The highest forecast count from now until the pre-warm lead (None: no forecast).
    ahead: float | None
    #: The highest forecast count from now until the hold horizon (None: no forecast).
    back: float | None
    #: The recent error (None: too few scored forecasts to say).
    error: float | None
    #: Seconds of the pre-warm lead and of the hold horizon (for the decision line).
    lead_s: float = 0.0
    hold_s: float = 0.0
    #: Work is forecast to arrive within the lead: read at least every FAST_READ_S until it has (a read that
    #: comes late in a batch sees less than arrived, and the forecaster learns from the reads).
    watch: bool = False


@dataclass(frozen=True, slots=True)
class Predicted:
    """What the floor did at one check, for the decision line, status and metrics."""

    mode: Mode
    #: Workers the forecast asked for (0: none, or it stepped aside).
    floor: int
    #: The target the floor set (mode on) or would have set (shadow); None: it left the policy's target.
    would: int | None
    #: Why it stepped aside ("" when it was trusted).
    aside: str
    error: float | None

    @property
    def acted(self) -> bool:
        return self.mode is Mode.ON and self.would is not None


@dataclass(frozen=True, slots=True)
class ForecastReport:
    """One pool's forecast as operators read it (`dqagent status`, `/metrics`, the journal): its mode, whether
    it is trusted (else `why` it stepped aside), its error over the recent scores and the last day, the short
    period found (None: none, the daily/weekly profile or nothing), and the floor it asked for at `at_s`."""

    mode: Mode
    trusted: bool
    why: str
    error_recent: float | None
    error_day: float | None
    period_s: float | None
    floor: int
    would: int | None
    #: Wall-clock seconds of the check this report is from.
    at_s: float

    def to_json(self) -> dict[str, object]:
        return {"mode": str(self.mode), "trusted": self.trusted, "why": self.why, "error_recent": self.error_recent,
                "error_day": self.error_day, "period_s": self.period_s, "floor": self.floor, "would": self.would,
                "at_s": self.at_s}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> ForecastReport:
        """What `to_json` wrote; raises ValueError, KeyError or TypeError on anything else."""
        def opt(v: Any) -> float | None:
            return None if v is None else float(v)
        return cls(Mode(d["mode"]), bool(d["trusted"]), str(d["why"])[:200], opt(d["error_recent"]),
                   opt(d["error_day"]), opt(d["period_s"]), int(d["floor"]),
                   None if d["would"] is None else int(d["would"]), float(d["at_s"]))


def forecast_fields(p: Predicted) -> dict[str, object]:
    """The decision line's journal fields for PREDICTIVE (shadow or on): the mode, the floor the forecast asked
    for, the target it set or would have set ("" when it left the policy's), its recent error ("" unknown) and
    why it stepped aside ("" when trusted)."""
    return dict(forecast_mode=str(p.mode), forecast_floor=p.floor, forecast_would="" if p.would is None else p.would,
                forecast_error="" if p.error is None else f"{p.error:.3f}", forecast_aside=p.aside)


def per_worker(policy: Policy) -> float:
    """Outstanding messages one worker holds at the policy's own target: TARGET_PER_WORKER for `target`,
    the scale-up multiplier for `step` (above it the seed rule adds a worker); 1 for any other policy."""
    if isinstance(policy, TargetPolicy):
        return policy.per_worker
    if isinstance(policy, StepPolicy):
        return policy.up_multiplier
    return 1.0


def aside(forecast: Forecast) -> str:
    """Why the forecast may not act now ("" when it may)."""
    if forecast.ahead is None or forecast.back is None:
        return "no rhythm learnt yet"
    if forecast.error is None:
        return "too few forecasts scored yet"
    if forecast.error > TRUST_ERROR:
        return f"forecast error {forecast.error:.0%} > {TRUST_ERROR:.0%}"
    return ""


def floor(decision: Decision, workers: int, forecast: Forecast, each: float, lo: int,
          hi: int) -> tuple[Decision, Predicted]:
    """Rule 3b: `decision` raised to the forecast's floor in mode `on`; unchanged otherwise. `workers`: the
    pool now (the hold keeps only workers that exist); `each`: `per_worker(policy)`."""
    why = aside(forecast)
    if why or forecast.ahead is None or forecast.back is None:
        return decision, Predicted(forecast.mode, 0, None, why, forecast.error)
    warm = _need(forecast.ahead, each, lo, hi)
    keep = min(workers, _need(forecast.back, each, lo, hi))
    need = max(warm, keep)
    if need <= decision.target:
        return decision, Predicted(forecast.mode, need, None, "", forecast.error)
    if warm >= keep:
        note = f"forecast {forecast.ahead:.0f} outstanding within {forecast.lead_s:.0f}s: pre-warm {need}"
    else:
        note = f"forecast {forecast.back:.0f} outstanding within {forecast.hold_s:.0f}s: hold {need}"
    predicted = Predicted(forecast.mode, need, need, "", forecast.error)
    if forecast.mode is Mode.ON:
        return Decision(need, f"{decision.reason}; {note}"), predicted
    return decision, predicted


def _need(count: float, each: float, lo: int, hi: int) -> int:
    return max(lo, min(hi, math.ceil(count / each - 1e-9)))

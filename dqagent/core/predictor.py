"""The forecaster as the agent and the simulator keep it between checks (PREDICTIVE), pure.

At each check the caller asks `forecast()` for the step's `Forecast` (the pre-warm lead and the hold horizon
from the measured start time), decides, then feeds what it read to `learn()`. Both callers do exactly this, so
the simulator's forecasts are the agent's.
"""

from __future__ import annotations

from datetime import tzinfo
from typing import TYPE_CHECKING

from dqagent.core.forecast import Forecaster, Kind, Outlook
from dqagent.core.prediction import Forecast, Mode

if TYPE_CHECKING:
    from dqagent.core.step import Observed, Rules

#: The hold horizon past the pre-warm lead: at least this many seconds, or this many leads. A stop followed by
#: a start within it would cost a start-up and the wait of the work that meets a cold pool, for little saved.
HOLD_MIN_S = 120.0
HOLD_LEADS = 4.0


def lead_s(rules: Rules, observed: Observed) -> float:
    """How far ahead a worker must be asked for to be running in time: the measured start job, the start
    check (PROCESS_STARTUP_DELAY), and one read interval (the read that sees the forecast may come that late)."""
    return observed.start_s + rules.startup_delay_s + rules.read_every_s


def hold_s(lead: float) -> float:
    return lead + max(HOLD_MIN_S, HOLD_LEADS * lead)


def count(outlook: Outlook | None, now: int) -> float | None:
    """The count an outlook forecasts: a rise on top of the count now, or a level."""
    if outlook is None:
        return None
    return now + outlook.value if outlook.kind is Kind.RISE else outlook.value


class Predicting:
    """A `Forecaster` in one mode, with the horizons the step needs."""

    def __init__(self, mode: Mode, forecaster: Forecaster | None = None, zone: tzinfo | None = None) -> None:
        self.mode = mode
        self.forecaster = forecaster if forecaster is not None else Forecaster(zone)

    def forecast(self, rules: Rules, observed: Observed, wall_s: float) -> Forecast:
        """The step's input at wall-clock `wall_s`."""
        f, lead = self.forecaster, lead_s(rules, observed)
        hold = hold_s(lead)
        now = observed.demand.outstanding
        ahead = f.outlook(wall_s, wall_s + lead)
        return Forecast(self.mode, count(ahead, now), count(f.outlook(wall_s, wall_s + hold), now),
                        f.error_recent(), lead, hold,
                        watch=ahead is not None and ahead.kind is Kind.RISE and ahead.value > 0)

    def learn(self, observed: Observed, wall_s: float, lead: float) -> None:
        """What this check read (nothing while the broker is down: a gap, never a zero), and the forecast
        for `lead` ahead to score later."""
        if observed.broker_down_since_s is not None:
            return
        self.forecaster.observe(wall_s, observed.demand.outstanding)
        self.forecaster.commit(wall_s, lead)

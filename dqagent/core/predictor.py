"""The forecaster as the agent and the simulator keep it between checks (PREDICTIVE), pure.

At each check the caller asks `forecast()` for the step's `Forecast` (it learns what the check read first; the
pre-warm lead and the hold horizon come from the measured start time), decides, then calls `learn()`, which
keeps the forecast made to be scored. Both callers do exactly this, so
the simulator's forecasts are the agent's.
"""

from __future__ import annotations

from datetime import tzinfo
from typing import TYPE_CHECKING

from dqagent.core.forecast import Forecaster, Kind, Outlook
from dqagent.core.policies import FAST_READ_S, idle_read_s
from dqagent.core.prediction import Forecast, Mode

if TYPE_CHECKING:
    from dqagent.core.step import Observed, Rules

#: The hold horizon past the pre-warm lead: at least this many seconds, or this many leads. A stop followed by
#: a start within it would cost a start-up and the wait of the work that meets a cold pool, for little saved.
HOLD_MIN_S = 0.0
HOLD_LEADS = 4.0


def lead_s(rules: Rules, observed: Observed) -> float:
    """How far ahead a worker must be asked for to be running in time: the measured start job, the start
    check (PROCESS_STARTUP_DELAY), and one fast read (work forecast within the watch horizon is read at least
    every FAST_READ_S)."""
    return observed.start_s + rules.startup_delay_s + FAST_READ_S


def watch_s(rules: Rules, lead: float) -> float:
    """How far ahead forecast work switches to fast reads: the lead plus the longest interval between two reads
    (an idle pool's, with adaptive reads), so the read that starts the pre-warm is never late."""
    longest = idle_read_s(rules.read_every_s, rules.check_interval_s) if rules.adaptive_reads else rules.read_every_s
    return lead + max(longest, FAST_READ_S)


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
        """Learn what this check read (nothing while the broker is down: a gap, never a zero), then the step's
        input at wall-clock `wall_s`."""
        f, lead = self.forecaster, lead_s(rules, observed)
        if observed.broker_down_since_s is None:
            f.observe(wall_s, observed.demand.outstanding)
        hold = hold_s(lead)
        now = observed.demand.outstanding
        ahead = f.outlook(wall_s, wall_s + lead)
        soon = f.outlook(wall_s, wall_s + watch_s(rules, lead))
        return Forecast(self.mode, count(ahead, now), count(f.outlook(wall_s, wall_s + hold), now),
                        f.error_recent(), lead, hold,
                        watch=soon is not None and soon.kind is Kind.RISE and soon.value > 0)

    def learn(self, observed: Observed, wall_s: float, lead: float) -> None:
        """After the check: the forecast for `lead` ahead, kept to be scored (none while the broker is down)."""
        if observed.broker_down_since_s is None:
            self.forecaster.commit(wall_s, lead)

"""What a pool does while its demand cannot be read (BROKER_FAILURE), pure: KEDA's fallback, Nomad's on_check_error.

While Redis (or, in fleet mode, the fleet's records) cannot be read, the decision step (`dqagent.core.step`,
rule 2) takes the pool's target from this rule instead of its policy, with no demand:

- `hold` (the default, the behaviour before this setting): keep the workers there are (clamped to
  [MIN, MAX]);
- `min`: hold through BROKER_FAILURE_GRACE seconds of outage, then go to MIN_PROCESSES;
- `fixed`: hold through the grace period, then go to BROKER_FAILURE_COUNT, clamped to [MIN, MAX].

The outage starts at the first failed read (monotonic seconds, `Observed.broker_down_since_s`); the first
read that succeeds ends it, and the policy decides again from its own memory (its state is kept through the
outage, not fed the empty demand).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from dqagent.core.policies import Decision


class Mode(StrEnum):
    """BROKER_FAILURE's choices."""

    HOLD = "hold"
    MIN = "min"
    FIXED = "fixed"


#: BROKER_FAILURE_GRACE's default: one minute of outage before `min` or `fixed` takes over.
DEFAULT_GRACE_S = 60.0


@dataclass(frozen=True, slots=True)
class BrokerFailure:
    """One pool's BROKER_FAILURE, BROKER_FAILURE_COUNT and BROKER_FAILURE_GRACE."""

    mode: Mode = Mode.HOLD
    count: int = 0
    grace_s: float = DEFAULT_GRACE_S


#: The default: keep the workers through an outage.
HOLD = BrokerFailure()


@dataclass(frozen=True, slots=True)
class Outage:
    """What the rule decided for one check during an outage."""

    decision: Decision
    #: Whether `min`/`fixed` applies now (the grace period is over); False: holding (`hold`, or in the grace).
    applied: bool
    #: Seconds until the grace period ends (0 once over, or with `hold`): the next check should come by then.
    grace_left_s: float

    def status(self, rule: BrokerFailure) -> str:
        """For STATUS=, e.g. `BROKER_FAILURE=fixed: 2 workers` or `BROKER_FAILURE=min in 40s`."""
        if rule.mode is Mode.HOLD:
            return "BROKER_FAILURE=hold: keeping workers"
        if not self.applied:
            return f"BROKER_FAILURE={rule.mode.value} in {self.grace_left_s:.0f}s, keeping workers until then"
        return f"BROKER_FAILURE={rule.mode.value}: {self.decision.target} workers"


def decide(rule: BrokerFailure, pool: int, min_processes: int, max_processes: int, down_since_s: float,
           now_s: float) -> Outage:
    """The pool's target while the broker has been unreadable since `down_since_s` (never outside [MIN, MAX])."""
    down_s = max(0.0, now_s - down_since_s)
    held = max(min_processes, min(max_processes, pool))
    if rule.mode is Mode.HOLD:
        return Outage(Decision(held, f"broker unreadable for {down_s:.0f}s: BROKER_FAILURE=hold keeps {held}"),
                      False, 0.0)
    left = rule.grace_s - down_s
    if left > 0:
        return Outage(Decision(held, f"broker unreadable for {down_s:.0f}s: holding {held}, BROKER_FAILURE="
                               f"{rule.mode.value} in {left:.0f}s"), False, left)
    wanted = min_processes if rule.mode is Mode.MIN else max(min_processes, min(max_processes, rule.count))
    why = "MIN_PROCESSES" if rule.mode is Mode.MIN else f"BROKER_FAILURE_COUNT={rule.count}"
    return Outage(Decision(wanted, f"broker unreadable for {down_s:.0f}s: BROKER_FAILURE={rule.mode.value}, "
                           f"{wanted} workers ({why})"), True, 0.0)

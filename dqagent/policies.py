"""Scaling policies: pure decisions from an observation and the policy's own previous state.

No I/O and no clock: the time is a field of the observation, the previous state is an argument,
so every policy can be tested exhaustively and replayed by the simulator.

Adding a policy means adding one class here with a `name`, `initial_state()` and `decide()`, and
registering it in `POLICIES`. (This replaces the old manager's advice to override
`_scale_up_decision`/`_scale_down_decision`.)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

from dqagent.config import Settings


@dataclass(frozen=True, slots=True)
class Observation:
    """What the agent knows at one instant. Counts are messages or worker processes."""

    #: Monotonic seconds; only differences matter.
    now_s: float
    #: The figure selected by QUEUE_METRIC (outstanding or ready), summed over queues.
    queue_length: int
    ready: int
    in_flight: int
    delayed: int
    #: Workers counted as capacity (active units).
    workers: int
    #: Of those, how many were started less than PROCESS_STARTUP_DELAY ago.
    starting: int = 0

    @property
    def outstanding(self) -> int:
        return self.ready + self.in_flight


@dataclass(frozen=True, slots=True)
class Decision:
    """The worker count to aim for, and why, in words an operator reads in the journal."""

    target: int
    reason: str


class Policy(Protocol):
    """What the agent and the simulator need from a policy."""

    name: ClassVar[str]

    def initial_state(self) -> Any:
        """The state before the first decision."""

    def decide(self, obs: Observation, state: Any) -> tuple[Decision, Any]:
        """Return the decision and the state to pass to the next call."""


def _fmt(x: float) -> str:
    return f"{x:g}"


def step_rule(
    queue_length: int, workers: int, lo: int, hi: int, up_multiplier: float, down_multiplier: float
) -> Decision:
    """The old manager's rule: one step up above n x up, one step down below n x down, clamped."""
    up_at = workers * up_multiplier
    down_at = workers * down_multiplier
    if queue_length > up_at:
        proposed = workers + 1
        why = f"queue {queue_length} > {workers} x {_fmt(up_multiplier)} = {_fmt(up_at)}"
    elif queue_length < down_at:
        proposed = workers - 1
        why = f"queue {queue_length} < {workers} x {_fmt(down_multiplier)} = {_fmt(down_at)}"
    else:
        proposed = workers
        why = f"queue {queue_length} within [{_fmt(down_at)}, {_fmt(up_at)}]"
    target = max(lo, min(hi, proposed))
    if target != proposed:
        why += f"; clamped to [{lo}, {hi}]"
    return Decision(target=target, reason=why)


@dataclass(frozen=True, slots=True)
class StepPolicy:
    """The seed rule, unchanged (SCALING_POLICY=step, the default)."""

    min_processes: int
    max_processes: int
    up_multiplier: float
    down_multiplier: float
    name: ClassVar[str] = "step"

    @classmethod
    def from_settings(cls, s: Settings) -> StepPolicy:
        return cls(s.min_processes, s.max_processes, s.scale_up_multiplier, s.scale_down_multiplier)

    def initial_state(self) -> None:
        return None

    def decide(self, obs: Observation, state: None) -> tuple[Decision, None]:
        decision = step_rule(
            obs.queue_length, obs.workers, self.min_processes, self.max_processes,
            self.up_multiplier, self.down_multiplier,
        )
        return decision, None


#: Policies offered to users, by SCALING_POLICY name.
POLICIES: dict[str, Callable[[Settings], Policy]] = {
    StepPolicy.name: StepPolicy.from_settings,
}


def make_policy(settings: Settings, name: str = "step") -> Policy:
    """Build the configured policy (names are validated by the configuration)."""
    return POLICIES[name](settings)

"""Scaling policies: pure decisions from an observation and the policy's own previous state.

No I/O and no clock: the time is a field of the observation, the previous state is an argument,
so every policy can be tested exhaustively and replayed by the simulator.

Adding a policy means adding one class here with a `name`, `initial_state()` and `decide()`, and
registering it in `POLICIES`. (This replaces the old manager's advice to override
`_scale_up_decision`/`_scale_down_decision`.)
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from dqagent.settings.config import Settings

if TYPE_CHECKING:  # a type only: the policies stay free of the parser's imports
    from dqagent.settings.workercmd import WorkerShape


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
    #: Seconds the oldest waiting message (head of a ready list) has waited; None: no message waits.
    oldest_age_s: float | None = None

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
    def from_settings(cls, s: Settings, shape: WorkerShape | None = None) -> StepPolicy:
        """The seed rule counts units, whatever their shape."""
        return cls(s.min_processes, s.max_processes, s.scale_up_multiplier, s.scale_down_multiplier)

    def initial_state(self) -> None:
        return None

    def decide(self, obs: Observation, state: None) -> tuple[Decision, None]:
        decision = step_rule(
            obs.queue_length, obs.workers, self.min_processes, self.max_processes,
            self.up_multiplier, self.down_multiplier,
        )
        return decision, None


def age_floor(decision: Decision, obs: Observation, max_age_s: float | None, max_step: int,
              max_processes: int) -> Decision:
    """MAX_QUEUE_AGE, composed after a policy's own decision: while the oldest waiting message is older
    than `max_age_s`, scale up even where the count rule keeps the pool (inside its tolerance band), and
    never down.

    Steps: one per whole `max_age_s` past the limit, at least one (an age in (1, 2] x the limit adds 1,
    in (2, 3] adds 2, ...), at most `max_step` (as any scale-up). Workers still starting count as the steps
    already taken, so a slow start does not start a second wave while the age is still high. Never above
    `max_processes`. Off (`max_age_s` None), no waiting message, or an age within the limit: `decision`
    unchanged.
    """
    age = obs.oldest_age_s
    if max_age_s is None or age is None or age <= max_age_s:
        return decision
    steps = min(max_step, max(1, math.ceil(age / max_age_s) - 1))
    floor = min(max_processes, max(obs.workers, obs.workers - obs.starting + steps))
    if floor <= decision.target:
        return decision
    why = f"; oldest message waited {age:.0f}s > MAX_QUEUE_AGE {_fmt(max_age_s)}s"
    if floor > obs.workers:
        why += f": up {floor - obs.workers}"
    elif floor == obs.workers:
        why += ": no scale-down" + (f", {obs.starting} starting" if obs.starting else "")
    else:  # MAX_PROCESSES was lowered below the pool (a reload)
        why += f": down to MAX_PROCESSES={max_processes} only"
    return Decision(target=floor, reason=decision.reason + why)


#: Most backlog-free reads the scale-down window keeps for its median.
FLOW_SAMPLES = 256


@dataclass(frozen=True, slots=True)
class TargetState:
    """What the scale-down path remembers of the last window.

    `recommendations` is a monotone queue: times ascending, recommendations strictly descending, so the
    first entry is the highest recommendation still inside the window and the tuple stays short.
    `flow` holds (time, in flight) read while the ready list was empty: the work the pool carried when
    it was keeping up, free of any backlog.
    """

    recommendations: tuple[tuple[float, int], ...] = ()
    flow: tuple[tuple[float, int], ...] = ()

    def remember(self, now_s: float, recommendation: int, window_s: float) -> TargetState:
        kept = tuple((t, r) for t, r in self.recommendations if t > now_s - window_s and r > recommendation)
        return replace(self, recommendations=(*kept, (now_s, recommendation)))

    def highest(self) -> int:
        return self.recommendations[0][1]

    def note_flow(self, now_s: float, ready: int, in_flight: int, window_s: float) -> TargetState:
        kept = tuple((t, f) for t, f in self.flow if t > now_s - window_s)
        # At most FLOW_SAMPLES reads per window, so a day-long window polled every second stays small.
        spaced = not kept or now_s - kept[-1][0] >= window_s / FLOW_SAMPLES
        return replace(self, flow=(*kept, (now_s, in_flight)) if ready == 0 and spaced else kept)

    def typical_in_flight(self, now_s: float, window_s: float) -> float | None:
        """Median in flight over the window's backlog-free reads (None if the backlog never emptied)."""
        recent = [f for t, f in self.flow if t > now_s - window_s]
        return statistics.median(recent) if recent else None


@dataclass(frozen=True, slots=True)
class TargetPolicy:
    """Target tracking on outstanding messages (ready + in flight) per worker (SCALING_POLICY=target).

    What it takes from the anchors, and what it leaves:
    - HPA's proportional rule, desired = ceil(outstanding / per_worker), so a burst is answered in
      one decision instead of one worker per check; bounded by `max_step` per decision so a
      mis-read metric cannot start MAX_PROCESSES workers at once.
    - Outstanding, not `LLEN`: Dramatiq prefetches 2 x threads per worker process, so the ready list
      can be empty while every worker is saturated (KEDA's Redis list scaler is blind to that and flaps).
    - A tolerance band around the target (HPA's 10 %), so noise does not move the count.
    - Scale-down to the highest recommendation seen within `window_s` (HPA's stabilization), and
      never below ceil(in_flight / capacity), the units the fetched work needs.
    - But a drained backlog does not hold its workers for the whole window (HPA's stabilization is
      why it costs most after bursts): the hold is capped at what the window's typical flow needs
      (median in flight while the ready list was empty, over capacity filled up to the tolerance)
      plus one spare, so one quiet read at a steady level does not take a needed worker away.
    - Workers still starting count as capacity: demand they will absorb adds nothing, so a slow
      start does not trigger a second wave (the mistake AWS warm-up rules exist to prevent).
    - Unlike Celery's autoscale it does not shrink right after growth; unlike Judoscale it has no
      up-cooldown: scale-up is the part that must be fast.
    """

    min_processes: int
    max_processes: int
    #: Outstanding messages one worker unit should hold at target (TARGET_PER_WORKER; auto = the
    #: unit's prefetch, processes x 2 x threads).
    per_worker: float
    #: Relative band around the target inside which the worker count is kept.
    tolerance: float
    #: Most workers added by one decision.
    max_step: int
    #: How long a higher recommendation holds off scale-down.
    window_s: float
    #: Messages one unit runs at once (processes x threads), for the in-flight floor and the flow cap.
    capacity: int
    #: Let one decision add up to the current worker count when that is more than `max_step` (HPA's
    #: doubling), so a flash crowd on a large pool climbs in a few reads.
    doubling: bool = False
    #: Messages one unit may hold in flight for the scale-down floor (None: `capacity`, every in-flight
    #: message counted as running; the unit's prefetch counts the held ones as what they are).
    floor_per_unit: float | None = None
    #: Keep the flow cap's spare unit when the pool is idle (nothing outstanding now and a typical flow
    #: of 0 over the window); False lets an idle pool at MIN 0 go to zero without waiting out the window.
    idle_spare: bool = True
    #: Hold the count while outstanding is up to `tolerance` above target (HPA's band). False: hold only
    #: below target, so a backlog beyond every unit's prefetch (ratio > 1) always asks for more units.
    band_above: bool = True
    name: ClassVar[str] = "target"
    #: MAX_QUEUE_AGE: scale up while the oldest waiting message is older (`age_floor`); None: off.
    max_queue_age_s: float | None = None

    @classmethod
    def from_settings(cls, s: Settings, shape: WorkerShape) -> TargetPolicy:
        """The policy for units of `shape` (read from DRAMATIQ_COMMAND by `dqagent.settings.workercmd.worker_shape`)."""
        # "auto": a unit is on target when it holds its full prefetch (processes x 2 x threads): every
        # thread busy and the next messages already fetched, so outstanding / prefetch is the fill level.
        per_worker = s.target_per_worker if s.target_per_worker is not None else float(shape.prefetch)
        return cls(s.min_processes, s.max_processes, per_worker, s.target_tolerance,
                   s.scale_up_max_step, s.scale_down_window_s, shape.capacity, max_queue_age_s=s.max_queue_age_s)

    def initial_state(self) -> TargetState:
        return TargetState()

    def decide(self, obs: Observation, state: TargetState) -> tuple[Decision, TargetState]:
        """The count rule (`decide_on_count`), then MAX_QUEUE_AGE (`age_floor`).

        A target raised for age enters the scale-down window like any recommendation, so once the age is
        back under the limit the window (and the tolerance) keep the pool from dropping at once.
        """
        decision, state = self.decide_on_count(obs, state)
        aged = age_floor(decision, obs, self.max_queue_age_s, self.max_step, self.max_processes)
        if aged.target > decision.target:
            state = state.remember(obs.now_s, aged.target, self.window_s)
        return aged, state

    def decide_on_count(self, obs: Observation, state: TargetState) -> tuple[Decision, TargetState]:
        outstanding = obs.outstanding
        workers = obs.workers
        desired = math.ceil(outstanding / self.per_worker)
        starting = f", {obs.starting} starting" if obs.starting else ""
        head = f"outstanding {outstanding} for {workers} workers{starting} at {_fmt(self.per_worker)} each"
        ratio = outstanding / (workers * self.per_worker) if workers else math.inf
        if workers and abs(ratio - 1) <= self.tolerance and (self.band_above or ratio <= 1):
            recommendation = workers
            why = f"{head}: within {_fmt(self.tolerance * 100)}% of target"
        else:
            recommendation = desired
            why = f"{head}: wants {desired}"
        # The flow cap reads the reads before this one, so more demand now can never lower the target.
        typical = state.typical_in_flight(obs.now_s, self.window_s)
        state = state.remember(obs.now_s, recommendation, self.window_s)
        if recommendation > workers:
            step = max(self.max_step, workers) if self.doubling else self.max_step
            proposed = min(recommendation, workers + step)
            if proposed < recommendation:
                why += f"; up by at most {step}"
        elif recommendation < workers:
            stable = state.highest()
            # The units whose threads the typical flow fills (up to the tolerance), plus one spare. Capacity,
            # not TARGET_PER_WORKER: the flow is measured with no backlog, so it is mostly running work.
            spare = 0 if not self.idle_spare and typical == 0 and outstanding == 0 else 1
            cap = stable if typical is None else math.ceil(typical / (self.capacity * (1 + self.tolerance))) + spare
            capped = cap < stable
            if capped:
                stable = max(recommendation, cap)
            floor = math.ceil(obs.in_flight / (self.floor_per_unit or self.capacity))
            proposed = min(workers, max(stable, floor))
            if proposed > recommendation:
                if floor >= stable:
                    why += f"; in flight {obs.in_flight} needs {floor}"
                elif capped:
                    why += (f"; holding {proposed}: the last {_fmt(self.window_s)}s of flow need {cap - spare}"
                            + (" + 1 spare" if spare else ""))
                else:
                    why += f"; holding {proposed}, the highest in {_fmt(self.window_s)}s"
        else:
            proposed = workers
        state = state.note_flow(obs.now_s, obs.ready, obs.in_flight, self.window_s)
        target = max(self.min_processes, min(self.max_processes, proposed))
        if target != proposed:
            why += f"; clamped to [{self.min_processes}, {self.max_processes}]"
        return Decision(target=target, reason=why), state


def thresholds(settings: Settings, workers: int, shape: WorkerShape) -> tuple[float, float]:
    """(scale-up, scale-down) queue lengths for `workers`, as `dqagent status` shows them.

    For `step` the seed's n x multipliers; for `target` the edges of the tolerance band around
    n x TARGET_PER_WORKER (outstanding messages), outside which the count changes.
    """
    if settings.scaling_policy == TargetPolicy.name:
        p = TargetPolicy.from_settings(settings, shape)
        return workers * p.per_worker * (1 + p.tolerance), workers * p.per_worker * (1 - p.tolerance)
    return workers * settings.scale_up_multiplier, workers * settings.scale_down_multiplier


#: The fastest adaptive demand read (seconds): at most one Redis round trip per second, unless
#: DEMAND_POLL_INTERVAL itself is set below it.
FAST_READ_S = 1.0


def read_interval_s(base_s: float, obs: Observation, target: int, previous_outstanding: int | None,
                    slowest_s: float = math.inf) -> float:
    """Seconds until the next demand read with `target` (DEMAND_POLL_INTERVAL = `base_s`), adapted:

    - min(`base_s`, FAST_READ_S) while the pool is at zero, while it grows (`target` above the workers,
      or workers still starting) or while a backlog rises (ready messages, outstanding up since the last
      read): the first message on an empty pool is seen within a second, and a climb is followed read by
      read, at no more than one read per second unless DEMAND_POLL_INTERVAL itself asks for more;
    - 2 x `base_s` when idle (nothing outstanding, workers kept, no change), at most `slowest_s`
      (CHECK_INTERVAL in the agent);
    - `base_s` otherwise.
    """
    fast = min(base_s, FAST_READ_S)
    rising = previous_outstanding is not None and obs.ready > 0 and obs.outstanding > previous_outstanding
    if obs.workers == 0 or target > obs.workers or obs.starting or rising:
        return fast
    if obs.outstanding == 0 and target == obs.workers:
        return idle_read_s(base_s, slowest_s)
    return base_s


def idle_read_s(base_s: float, slowest_s: float = math.inf) -> float:
    """The longest adaptive read interval, an idle pool's: 2 x `base_s`, at most `slowest_s`, never under
    `base_s`."""
    return max(base_s, min(2 * base_s, slowest_s))


#: Policies offered to users, by SCALING_POLICY name.
POLICIES: dict[str, Callable[[Settings, WorkerShape], Policy]] = {
    StepPolicy.name: StepPolicy.from_settings,
    TargetPolicy.name: TargetPolicy.from_settings,
}


def make_policy(settings: Settings, name: str = "step", *, shape: WorkerShape) -> Policy:
    """Build the configured policy for units of `shape` (names are validated by the configuration)."""
    return POLICIES[name](settings, shape)

"""What the agent observed and did as of its last tick: the one thing the metrics read (pure).

The loop builds a `Snapshot` at the end of each tick (and on a tick where Redis failed) from figures it
already holds, and publishes it as `Agent.latest`. `dqagent.report.metrics` only reads that attribute: a scrape
never calls Redis or D-Bus, and since a snapshot is immutable and replaced by one assignment, a reader in
another thread sees the old one or the new one, whole, never a half-updated mix.

Cumulative figures (scale actions, failed starts, source errors, the decision-duration histogram) live in
one `Accumulator` the agent owns and only its loop mutates; each snapshot carries a frozen copy
(`Counters`). Label values are bounded sets, never free text: a scale action's `pool` is a pool's name
(settings.parsers.POOL_NAME_PATTERN, or "default") and its `reason` the policy's name or one of `REASONS`
(see `action_reason`), so a scrape has a fixed number of series.

A snapshot holds the host-wide figures once and each pool's figures (`PoolFigures`) in `pools`, the default
pool (the one `/etc/dqagent/dqagent.env` describes) first.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING

from dqagent.core.guard import Headroom
from dqagent.core.history import DecisionNote, Point
from dqagent.core.prediction import ForecastReport
from dqagent.core.units import UnitState
from dqagent.core.untrusted import RecordKind, Rejection
from dqagent.settings.parsers import DEFAULT_POOL

if TYPE_CHECKING:  # the type only: this module imports no redis
    from dqagent.core.demand import QueueDemand
    from dqagent.core.pause import Pause

#: Upper bounds (seconds) of the decision-duration buckets: a tick reads Redis and systemd (a few ms),
#: a slow one waits for timeouts (REDIS_TIMEOUT, DBUS_TIMEOUT: seconds).
DURATION_BUCKETS_S: tuple[float, ...] = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class Direction(StrEnum):
    UP = "up"
    DOWN = "down"


class Source(StrEnum):
    """Where a failed read or request went."""

    REDIS = "redis"
    SYSTEMD = "systemd"
    #: A check that raised an error no rule foresaw (a bug, or data no check caught): `tick_failed`.
    INTERNAL = "internal"


class Reason(StrEnum):
    """Why a scale action happened, when it was not the policy's own target (then: the policy's name)."""

    #: The adoption at start (`start --processes N`, or the pool clamped into [MIN, MAX]).
    STARTUP = "startup"
    #: The policy asked for fewer than MIN_PROCESSES: the bound, not the policy, set the count.
    MIN_PROCESSES = "min_processes"
    #: The policy asked for more than MAX_PROCESSES.
    MAX_PROCESSES = "max_processes"
    #: The policy asked for 0 but delayed messages need a consumer to become due.
    DELAYED_MESSAGES = "delayed_messages"
    #: HOST_MAX_PROCESSES: the pool gave way to (or waits for room from) other pools.
    HOST_BUDGET = "host_budget"
    #: A SCHEDULE window's floor or ceiling (`dqagent.core.schedule`).
    SCHEDULE = "schedule"
    #: Maintenance (`dqagent pause --at N`) scaled the pool to N (a pause itself never acts).
    PAUSE = "pause"
    #: BROKER_FAILURE: Redis could not be read, the pool went to MIN or BROKER_FAILURE_COUNT.
    BROKER_FAILURE = "broker_failure"
    #: PREDICTIVE=on: the forecast's floor pre-warmed or held workers (`dqagent.core.prediction`).
    FORECAST = "forecast"


def action_reason(policy: str, proposed: int, wanted: int, *, delayed_override: bool = False) -> str:
    """The bounded `reason` label of a scale action: the policy's name unless a bound or rule decided.

    `proposed` is the policy's target, `wanted` that target clamped to [MIN, MAX].
    """
    if delayed_override:
        return Reason.DELAYED_MESSAGES
    if wanted > proposed:
        return Reason.MIN_PROCESSES
    if wanted < proposed:
        return Reason.MAX_PROCESSES
    return policy


@dataclass(frozen=True, slots=True)
class Histogram:
    """Observations per bucket (not cumulative); `counts` has one more entry than `bounds` (+Inf)."""

    bounds: tuple[float, ...]
    counts: tuple[int, ...]
    sum: float

    @property
    def count(self) -> int:
        return sum(self.counts)

    def cumulative(self) -> list[tuple[float, int]]:
        """(`le`, observations <= le) pairs, ending with infinity: Prometheus' bucket form."""
        out: list[tuple[float, int]] = []
        total = 0
        for bound, n in zip((*self.bounds, math.inf), self.counts, strict=True):
            total += n
            out.append((bound, total))
        return out


@dataclass(frozen=True, slots=True)
class Counters:
    """The cumulative figures at one instant (a frozen copy of the `Accumulator`)."""

    #: ((pool, direction, reason), actions), sorted.
    scale_actions: tuple[tuple[tuple[str, str, str], int], ...] = ()
    #: Starts that did not pass their PROCESS_STARTUP_DELAY check.
    start_failures: int = 0
    #: Workers the kernel killed for memory (systemd's Result=oom-kill).
    oom_kills: int = 0
    #: (source, errors), for every `Source` (0 included: a counter exists from the start).
    source_errors: tuple[tuple[str, int], ...] = tuple((s.value, 0) for s in Source)
    #: (kind, values skipped), for every `RecordKind`: broker data refused at each read (dqagent.core.untrusted).
    records_rejected: tuple[tuple[str, int], ...] = tuple((k.value, 0) for k in RecordKind)
    #: (pool, hung workers restarted), sorted (`dqagent.core.busy.hung`).
    hung_restarts: tuple[tuple[str, int], ...] = ()
    decision_duration: Histogram = field(default_factory=lambda: Histogram(
        DURATION_BUCKETS_S, (0,) * (len(DURATION_BUCKETS_S) + 1), 0.0))


class Accumulator:
    """The agent's cumulative counters. Only the loop mutates it; readers get `frozen()` copies."""

    def __init__(self, buckets: tuple[float, ...] = DURATION_BUCKETS_S) -> None:
        self._actions: dict[tuple[str, str, str], int] = {}
        self._errors: dict[str, int] = dict.fromkeys((s.value for s in Source), 0)
        self._rejected: dict[str, int] = dict.fromkeys((k.value for k in RecordKind), 0)
        self._buckets = buckets
        self._counts = [0] * (len(buckets) + 1)
        self._sum = 0.0
        #: Starts that failed their check, and workers the kernel killed for memory, ever.
        self.start_failures = 0
        self.oom_kills = 0
        self._hung: dict[str, int] = {}

    def scale_action(self, direction: Direction, reason: str, pool: str = DEFAULT_POOL) -> None:
        key = (pool, direction.value, reason)
        self._actions[key] = self._actions.get(key, 0) + 1

    def hung_restarts(self, pool: str, n: int) -> None:
        self._hung[pool] = self._hung.get(pool, 0) + n

    def source_error(self, source: Source) -> None:
        self._errors[source.value] += 1

    def start_failed(self) -> None:
        self.start_failures += 1

    def oom_killed(self) -> None:
        self.oom_kills += 1

    def record_rejected(self, kind: RecordKind) -> None:
        self._rejected[kind.value] += 1

    def decision_took(self, seconds: float) -> None:
        """One tick's duration; a bucket's bound is inclusive (`le`), as in Prometheus."""
        seconds = max(0.0, seconds)
        self._counts[bisect.bisect_left(self._buckets, seconds)] += 1
        self._sum += seconds

    def frozen(self) -> Counters:
        return Counters(scale_actions=tuple(sorted(self._actions.items())), start_failures=self.start_failures,
                        oom_kills=self.oom_kills,
                        source_errors=tuple(sorted(self._errors.items())),
                        records_rejected=tuple(sorted(self._rejected.items())),
                        hung_restarts=tuple(sorted(self._hung.items())),
                        decision_duration=Histogram(self._buckets, tuple(self._counts), self._sum))


@dataclass(frozen=True, slots=True)
class WorkerCounts:
    """Worker units by the reconciler's counting rules (`dqagent.core.reconciler.census`), and the target."""

    running: int
    #: Coming: activating, a start job, or a start of ours not judged yet.
    starting: int
    stopping: int
    #: Failed, or in auto-restart after a crash (those also count as starting).
    failed: int
    #: The policy's target clamped to [MIN, MAX] (`Plan.wanted`).
    desired: int


@dataclass(frozen=True, slots=True)
class PoolFigures:
    """One pool's figures. `workers` None: systemd not read yet; `queues` empty: Redis down."""

    #: The pool's name: "default" (`DEFAULT_POOL`) for the pool of dqagent.env.
    name: str
    policy: str
    min_processes: int
    max_processes: int
    workers: WorkerCounts | None
    queues: tuple[QueueDemand, ...]
    #: POOL_PRIORITY.
    priority: int = 0
    #: Its share of HOST_MAX_PROCESSES (`dqagent.core.budget.Allotment.share`); None: no host budget.
    share: int | None = None
    #: SCHEDULE's floor and ceiling in force (pre-warm included) at its last check; None: none.
    schedule_floor: int | None = None
    schedule_ceiling: int | None = None
    #: Its pause or maintenance in force (`dqagent pause`); None: not paused.
    pause: Pause | None = None
    #: BROKER_FAILURE, and whether it sets the pool's count now (Redis unreadable; `min`/`fixed`: after the grace).
    broker_failure: str = "hold"
    broker_failure_active: bool = False
    #: Its worker units as the last check listed them (for the status page; a running unit's restarts: -1).
    units: tuple[UnitState, ...] = ()
    #: Its figures over the last hour (`dqagent.core.history`), for the status page's chart.
    history: tuple[Point, ...] = ()
    #: Running workers by their own reports: (("busy", n), ("idle", n), ("unreported", n)); () before a check.
    activity: tuple[tuple[str, int], ...] = ()
    #: PREDICTIVE: the forecast as of its last check (None: off, or no check yet).
    forecast: ForecastReport | None = None


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Everything one scrape shows: the host-wide figures, and each pool's (`pools`, the default pool first)."""

    version: str
    #: Wall-clock seconds when this snapshot was taken.
    taken_at_s: float
    redis_up: bool
    pools: tuple[PoolFigures, ...]
    #: Wall-clock seconds of the last completed decision; None before the first.
    last_decision_s: float | None
    counters: Counters
    #: The guard's hold: the resource it holds a scale-up on ("cpu", "memory", "memory_full",
    #: "memory_available"), "" when not holding; None when the guard is off.
    guard_holding: str | None = None
    #: HOST_MAX_PROCESSES: the host's budget of worker processes, shared by the pools; None: no host cap.
    host_max_processes: int | None = None
    #: STATUS= as last sent; why the broker could not be read ("" when it could); the broker data the last
    #: read skipped; the last decisions that changed something; the guard's last reading of the host.
    status_text: str = ""
    broker_error: str = ""
    rejected: tuple[Rejection, ...] = ()
    decisions: tuple[DecisionNote, ...] = ()
    headroom: Headroom | None = None

    @property
    def default(self) -> PoolFigures:
        """The default pool's figures (the pool of dqagent.env; a snapshot always has it)."""
        for p in self.pools:
            if p.name == DEFAULT_POOL:
                return p
        raise LookupError(f"snapshot without the {DEFAULT_POOL} pool: {[p.name for p in self.pools]}")

"""The agent's short memory for the status page (pure): each pool's figures over the last hour, and the last
decisions with their reasons.

Bounded in time and in size: a point per pool at most every `STEP_S` seconds (a later point in the same step
replaces the earlier one, so a one-second demand read does not make 3,600 points), none older than
`WINDOW_S`, hence at most `MAX_POINTS` per pool (720 points; at most about 90 KiB per pool measured with
`sys.getsizeof`, plus a 6 KiB tuple per snapshot; docs/status-page.md); and the last `MAX_DECISIONS`
decisions, a decision repeating the pool's last one (same count, target and reason, as every routine check
does) kept once. While the broker cannot be read a point has no outstanding messages (a gap in the chart).
Only the loop mutates a `History`; readers in other threads get frozen tuples (`points`, `decisions`),
taken once per check and carried by the snapshot.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

#: Seconds of history kept (the chart's width).
WINDOW_S = 3600.0
#: At most one point per pool per step (seconds).
STEP_S = 5.0
#: Most points a pool keeps: one per step over the window.
MAX_POINTS = int(WINDOW_S / STEP_S)
#: Decisions kept (the newest last).
MAX_DECISIONS = 20


@dataclass(frozen=True, slots=True)
class Point:
    """One pool at one check: running workers, outstanding messages (None: the broker was not read), target."""

    at_s: float
    running: int
    outstanding: int | None
    target: int


@dataclass(frozen=True, slots=True)
class DecisionNote:
    """A decision that changed the pool (or its reason): from `workers` to `target`, and why."""

    at_s: float
    pool: str
    workers: int
    target: int
    reason: str


class History:
    """Each pool's points and the last decisions, bounded (see the module)."""

    def __init__(self, window_s: float = WINDOW_S, step_s: float = STEP_S, max_decisions: int = MAX_DECISIONS) -> None:
        self.window_s = window_s
        self.step_s = step_s
        self.max_points = max(1, int(window_s / step_s))
        self._points: dict[str, deque[Point]] = {}
        self._decisions: deque[DecisionNote] = deque(maxlen=max_decisions)

    def add(self, pool: str, point: Point) -> None:
        """Keep `point` for `pool`: kept points are at least a step apart, but the last one is always the
        newest (it replaces the last point while that one is within a step of the one before); points older than the
        window (relative to this one) are dropped."""
        ring = self._points.setdefault(pool, deque(maxlen=self.max_points))
        if len(ring) >= 2 and 0 <= ring[-1].at_s - ring[-2].at_s < self.step_s:
            ring[-1] = point  # the last point is within a step of the one before: the newest figures replace it
        else:
            ring.append(point)
        while ring and ring[0].at_s < point.at_s - self.window_s:
            ring.popleft()

    def decided(self, note: DecisionNote) -> None:
        """Keep `note` unless it repeats the pool's last kept decision (same count, target and reason)."""
        last = next((d for d in reversed(self._decisions) if d.pool == note.pool), None)
        if last is None or (last.workers, last.target, last.reason) != (note.workers, note.target, note.reason):
            self._decisions.append(note)

    def forget(self, pools: set[str]) -> None:
        """Drop the pools not in `pools` (a reload removed them)."""
        for name in set(self._points) - pools:
            del self._points[name]

    def points(self, pool: str) -> tuple[Point, ...]:
        return tuple(self._points.get(pool, ()))

    def decisions(self) -> tuple[DecisionNote, ...]:
        return tuple(self._decisions)

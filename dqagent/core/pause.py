"""Pause and maintenance (pure): the operator's hold on one pool, and what it does to a check's target.

A `Pause` is made by `dqagent pause` (root, or a member of PAUSE_GROUP: `dqagent.agent.pausing` checks) and
held by the agent until `dqagent resume` or its deadline. It is one rule of the step (`dqagent.core.step`,
rule 4b):

- a **pause** (`at` None) freezes the pool: the target is the pool's count as counted now, and the bounds
  widen to take it in (a pool an operator took below MIN_PROCESSES or above MAX_PROCESSES by hand stays
  there): nothing starts, nothing stops. What an operator starts or stops by hand is adopted as it is.
- **maintenance** (`at` N) scales the pool to N and holds it there: N is clamped to MAX_PROCESSES, never
  raised to MIN_PROCESSES (N is the operator's explicit count, 0 included). The guard still holds a scale-up
  toward N while the host lacks headroom.

The policy still decides underneath (its memory goes on), so on resume the pool returns to what the policy
wants at once. No clock of its own: `now_s` is wall-clock seconds, given by the caller (the agent's clock, or
the simulator's).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

#: `dqagent pause` without --for: long enough for a deploy or a migration, short enough not to be forgotten.
DEFAULT_DURATION_S = 4 * 3600.0
#: The one word that makes a pause last until `dqagent resume`.
FOREVER = "forever"
#: The longest --for other than `forever` (a typo such as 400d is refused, not obeyed).
MAX_DURATION_S = 30 * 86400.0
_UNITS = {"s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(text: str) -> float | None:
    """`--for`: `90s`, `25m`, `4h`, `1d`, `1h30m`, a bare number of seconds, or `forever` (None). Raises
    ValueError with the accepted forms."""
    raw = text.strip().lower()
    if raw == FOREVER:
        return None
    if re.fullmatch(r"\d+(\.\d+)?", raw):
        total = float(raw)
    else:
        parts = re.findall(r"(\d+(?:\.\d+)?)(min|s|m|h|d)", raw)
        if not parts or "".join(n + u for n, u in parts) != raw:
            raise ValueError(f"expected a duration such as 90s, 25m, 4h, 1h30m (at most 30d) or 'forever', "
                             f"got {text!r}")
        total = sum(float(n) * _UNITS[u] for n, u in parts)
    if not 0 < total <= MAX_DURATION_S:
        raise ValueError(f"expected a duration > 0 and at most 30d (or 'forever'), got {text!r}")
    return total


@dataclass(frozen=True, slots=True)
class Pause:
    """One pool's hold: who made it, why, since and until when (wall-clock seconds), and `at` for maintenance."""

    pool: str
    uid: int
    user: str
    reason: str
    since_s: float
    #: None: until `dqagent resume` (`--for forever`).
    until_s: float | None
    #: Maintenance: the count to hold; None: a pause (freeze).
    at: int | None = None

    def active_at(self, now_s: float) -> bool:
        return self.until_s is None or now_s < self.until_s

    def remaining_s(self, now_s: float) -> float:
        return math.inf if self.until_s is None else max(0.0, self.until_s - now_s)

    @property
    def kind(self) -> str:
        return "paused" if self.at is None else f"maintenance at {self.at}"

    def status(self, now_s: float) -> str:
        """For STATUS= and `dqagent status`: `paused by root for 25 more min: deploy`."""
        left = self.remaining_s(now_s)
        how_long = "until resumed" if math.isinf(left) else f"for {human(left)} more"
        return f"{self.kind} by {self.user} {how_long}" + (f": {self.reason}" if self.reason else "")

    def to_json(self) -> dict[str, Any]:
        return {"pool": self.pool, "uid": self.uid, "user": self.user, "reason": self.reason,
                "since": self.since_s, "until": self.until_s, "at": self.at}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Pause:
        """From `to_json`'s dict; raises KeyError, TypeError or ValueError for anything else."""
        until, at = d["until"], d["at"]
        return cls(str(d["pool"]), int(d["uid"]), str(d["user"]), str(d["reason"]), float(d["since"]),
                   None if until is None else float(until), None if at is None else int(at))


def human(seconds: float) -> str:
    """`25 min`, `3 h 5 min`, `40 s`: rounded up, as an operator reads a deadline."""
    s = math.ceil(seconds)
    if s < 60:
        return f"{s} s"
    m = math.ceil(s / 60)
    return f"{m} min" if m < 60 else f"{m // 60} h" + (f" {m % 60} min" if m % 60 else "")


@dataclass(frozen=True, slots=True)
class Held:
    """Rule 4b's answer: the target, the bounds the reconciler clamps to, and the decision line's reason."""

    target: int
    min_processes: int
    max_processes: int
    reason: str


def hold(pause: Pause, pool: int, min_processes: int, max_processes: int, now_s: float) -> Held:
    """The pool's target under `pause` (see the module): its count now (a pause), or `at` clamped to MAX."""
    if pause.at is None:
        return Held(pool, min(min_processes, pool), max(max_processes, pool), pause.status(now_s))
    n = min(pause.at, max_processes)
    return Held(n, min(min_processes, n), max_processes, pause.status(now_s))


def next_check_s(pause: Pause | None, now_s: float, delay_s: float) -> float:
    """The seconds to the next check: no later than the pause's deadline, so it expires on time."""
    if pause is None or pause.until_s is None:
        return delay_s
    return max(0.0, min(delay_s, pause.until_s - now_s))

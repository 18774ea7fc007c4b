"""A forecast of outstanding work from the agent's own history, pure (PREDICTIVE).

What it learns, from one figure per check (outstanding messages, the count the policies scale on):

- **Short regular periods** (a batch every few minutes): the rises of the recent series (in each
  `RESOLUTION_S` bucket over the last `RECENT_BUCKETS` buckets, 2 hours, how far the count climbed above
  where the bucket before ended) are searched for the period whose autocorrelation is highest (at least
  `MIN_CORRELATION`, at least `MIN_REPEATS` periods seen); the smallest period close to the best wins, so a
  multiple of the period is never taken for it. Only buckets whose JITTER neighbours have all been seen take
  part (a batch due in the next buckets must not read as missing). The forecast for a moment is a **rise**: the
  highest, over the last three periods, of the rise at that phase (a bucket missing there: its neighbour's). The
  highest, not a median: a read that came late in a batch sees less of it than arrived, never more. Rises, not counts:
  how fast a batch drains depends on the workers the forecast itself started, how much arrives does not.
- **The daily and weekly profile** (a business-hours curve, a nightly import): the highest count in each
  `SLOT_S` slot of the host's local day (so a DST change moves the profile with the clock), blended into a
  weekly profile (weekday x slot) and a daily one (slot) with weight `PROFILE_WEIGHT` for the newest day.
  Used when no short period is found: the weekly slot once two weeks have filled it, else the daily slot
  once three days have. Its forecast is a **level** (the count itself: at a steady flow it is the work in
  flight, which the workers do not change once there are enough).

How right it is: the forecast for the bucket `lead` seconds ahead (`commit`) is kept until that bucket has
been seen, then scored against what came (a rise within JITTER buckets counts as on time). A batch forecast
that does not come, or one that comes unforecast, scores badly. `error_recent()` (the last `RECENT_SCORES`
scores, what the floor trusts) and `error_day()` (the last day, what operators read) are the weighted absolute
percentage error, sum |forecast - seen| / sum seen. None: under MIN_SCORES scores. When a short period is first
found, the history it was found in is scored at once (`_hindcast`: each bucket from the periods before it), so a
rhythm seen three times can be trusted before its fourth batch instead of MIN_SCORES buckets later.

Bounds: at most 2 x RECENT_BUCKETS + 2 x (7 x 288 + 288) figures, DAY_SCORES scores of 3 numbers and a few
pending forecasts (about 240 KB as JSON after two days of reads every 2 s); the period search is
O(RECENT_BUCKETS x the periods tried) and runs at most once per `SEARCH_EVERY_S` (10 ms on a full window), more
often while the history is short and the search cheap (every SEARCH_SHARE of its span, at most once per bucket).
Gaps (the agent or the broker down) are missing buckets: they are skipped, never read as zero.

No clock and no I/O: the caller passes wall-clock seconds and saves `to_dict()` where it wants.
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, tzinfo
from enum import StrEnum
from typing import Any

#: Seconds per bucket of the recent series.
RESOLUTION_S = 10.0
#: Buckets of the recent series kept (2 hours).
RECENT_BUCKETS = 720
#: Buckets either side of a phase a batch may come early or late by (forecast and period search alike).
JITTER = 2
#: Shortest and longest regular period searched (seconds).
MIN_PERIOD_S = 30.0
MAX_PERIOD_S = 1800.0
#: Periods that must have been seen before one is trusted.
MIN_REPEATS = 3
#: Autocorrelation a period needs.
MIN_CORRELATION = 0.6
#: A period within this share of the best correlation counts as as good (the smallest of them wins).
NEAR_BEST = 0.9
#: Longest time between period searches (a search over the whole window costs about 10 ms); with less history
#: they come more often, down to every bucket: a search costs O(history^2), and a short period is found when its
#: third repeat has been seen, not up to a minute later.
SEARCH_EVERY_S = 60.0
#: ... every this share of the history's span.
SEARCH_SHARE = 1 / 18
#: Seconds per slot of the daily and weekly profiles.
SLOT_S = 300.0
SLOTS_PER_DAY = 288
#: Weight of the newest day in a profile slot.
PROFILE_WEIGHT = 0.3
#: Days (weekly: weeks) that must have filled a slot before it is used.
DAILY_SAMPLES = 3
WEEKLY_SAMPLES = 2
#: Scores kept: the recent ones the floor trusts, and a day's for operators.
RECENT_SCORES = 60
DAY_SCORES = 8640
#: Scores an error needs (fewer: None, too few to say).
MIN_SCORES = 8
#: Format of `to_dict()`.
VERSION = 1


class Kind(StrEnum):
    #: How far the count will climb above where it is (a short period's batch).
    RISE = "rise"
    #: The count itself (the daily and weekly profile).
    LEVEL = "level"


@dataclass(frozen=True, slots=True)
class Outlook:
    """The highest forecast over a window, and what it is."""

    kind: Kind
    value: float


@dataclass(frozen=True, slots=True)
class Period:
    """A short regular period found in the recent series."""

    seconds: float
    correlation: float


class Forecaster:
    """Learns outstanding work by bucket and slot; see the module docstring. Mutable, pure, not thread-safe."""

    def __init__(self, zone: tzinfo | None = None) -> None:
        self.zone: tzinfo = zone if zone is not None else UTC
        #: Bucket index (wall seconds // RESOLUTION_S) -> highest count seen in it, and its rise.
        self.recent: dict[int, int] = {}
        self.rises: dict[int, int] = {}
        #: The last count seen, and its bucket (where the next bucket's rise starts from).
        self.last: tuple[int, int] | None = None
        #: (day number, slot) of the slot being filled, and its highest count so far.
        self.slot: tuple[int, int] | None = None
        self.slot_sum = 0
        self.slot_n = 0
        self.weekly: list[float | None] = [None] * (7 * SLOTS_PER_DAY)
        self.weekly_n: list[int] = [0] * (7 * SLOTS_PER_DAY)
        self.daily: list[float | None] = [None] * SLOTS_PER_DAY
        self.daily_n: list[int] = [0] * SLOTS_PER_DAY
        self.base: int | None = None
        self.period: Period | None = None
        self.searched_s = -math.inf
        #: Bucket index -> the kind and the forecast made for it a lead ahead, until it has been scored.
        self.pending: dict[int, tuple[Kind, float]] = {}
        #: The last bucket scored (each is scored once).
        self.scored_to = -1
        #: (bucket index, forecast, seen), oldest first.
        self.scores: deque[tuple[int, float, int]] = deque(maxlen=DAY_SCORES)

    # -- learning --

    def observe(self, now_s: float, outstanding: int) -> None:
        """One check's figure at wall-clock `now_s`. Closes buckets and slots behind it and scores the
        forecasts made for closed buckets."""
        b = bucket(now_s)
        if b in self.recent:
            self.recent[b] = max(self.recent[b], outstanding)
        else:
            self._close_buckets(b)
            self.recent[b] = outstanding
            if self.last is not None and self.last[0] >= b - 1:  # after a gap the rise is unknown
                self.base = self.last[1]
            else:
                self.base = None
        if self.base is not None:
            self.rises[b] = max(self.rises.get(b, 0), outstanding - self.base)
        self.last = (b, outstanding)
        self._observe_slot(now_s, outstanding)
        span_s = (b - min(self.recent)) * RESOLUTION_S
        if now_s - self.searched_s >= min(SEARCH_EVERY_S, max(RESOLUTION_S, SEARCH_SHARE * span_s)):
            self.searched_s = now_s
            before, self.period = self.period, find_period(self.rises, b)
            if before is None and self.period is not None:
                self._hindcast(b)

    def _hindcast(self, now_bucket: int) -> None:
        """A period just found: score what it would have forecast for the complete buckets after its first
        period (each from the periods before it only, as `_score` scores rises), so that its error is known when
        it is found rather than MIN_SCORES buckets later. In-sample (the period was chosen on these buckets): a
        rhythm the agent trusts on it has been seen to repeat, and the live scores take over from there."""
        assert self.period is not None
        back = round(self.period.seconds / RESOLUTION_S)
        last = now_bucket - 1 - JITTER
        for c in range(max(min(self.rises) + back, last - RECENT_SCORES + 1, self.scored_to + 1), last + 1):
            if c not in self.recent:
                continue
            near = range(c - JITTER, c + JITTER + 1)
            said = [f for b in near if (f := self._by_period(b * RESOLUTION_S, self.period.seconds)) is not None]
            if said:
                self.scores.append((c, max(said), max(self.rises.get(b, 0) for b in near)))
        self.scored_to = max(self.scored_to, last)

    def _close_buckets(self, current: int) -> None:
        for c in sorted(k for k in self.pending if self.scored_to < k < current - JITTER):
            self._score(c)
            self.scored_to = c
        for old in [k for k in self.pending if k < current - 3 * JITTER]:
            del self.pending[old]
        for old in [k for k in self.recent if k <= current - RECENT_BUCKETS]:
            del self.recent[old]
            self.rises.pop(old, None)

    def _score(self, c: int) -> None:
        """Score bucket `c` (seen, with the JITTER buckets after it). Rises are compared as the highest within
        JITTER buckets either side, forecast and seen alike: a batch JITTER early or late is on time, and is
        scored as such on every bucket near it."""
        kind, forecast = self.pending[c]
        if c not in self.recent:
            return
        if kind is Kind.LEVEL:
            self.scores.append((c, forecast, self.recent[c]))
            return
        near = range(c - JITTER, c + JITTER + 1)
        forecasts = [self.pending[b][1] for b in near if b in self.pending and self.pending[b][0] is kind]
        seen = max(self.rises.get(b, 0) for b in near)
        self.scores.append((c, max(forecasts), seen))

    def _observe_slot(self, now_s: float, outstanding: int) -> None:
        key = local_slot(now_s, self.zone)
        if self.slot == key:
            self.slot_sum += outstanding
            self.slot_n += 1
            return
        if self.slot is not None and self.slot_n:
            self._learn_slot(*self.slot, self.slot_sum / self.slot_n)
        self.slot, self.slot_sum, self.slot_n = key, outstanding, 1

    def _learn_slot(self, day: int, slot: int, high: float) -> None:
        w = (day + 3) % 7 * SLOTS_PER_DAY + slot  # day 0 (1970-01-01) was a Thursday: weekday 3
        self.weekly[w] = _blend(self.weekly[w], high)
        self.weekly_n[w] += 1
        self.daily[slot] = _blend(self.daily[slot], high)
        self.daily_n[slot] += 1

    # -- forecasting --

    def kind(self) -> Kind | None:
        """What `at` forecasts now: rises while a short period is known, else levels (None: neither)."""
        return Kind.RISE if self.period is not None else Kind.LEVEL

    def at(self, when_s: float) -> float | None:
        """The forecast at wall-clock `when_s`, a rise or a level (`kind()`); None: nothing learnt says."""
        if self.period is not None:
            return self._by_period(when_s, self.period.seconds)
        day, slot = local_slot(when_s, self.zone)
        w = (day + 3) % 7 * SLOTS_PER_DAY + slot
        if self.weekly_n[w] >= WEEKLY_SAMPLES:
            return self.weekly[w]
        if self.daily_n[slot] >= DAILY_SAMPLES:
            return self.daily[slot]
        return None

    def _by_period(self, when_s: float, period_s: float) -> float | None:
        b = bucket(when_s)
        back = period_s / RESOLUTION_S
        rises = []
        for k in range(1, MIN_REPEATS + 1):
            centre = round(b - k * back)
            seen = next((self.rises.get(i, 0) for i in (centre, centre - 1, centre + 1) if i in self.recent), None)
            if seen is not None:
                rises.append(seen)
        return float(max(rises)) if rises else None

    def outlook(self, from_s: float, to_s: float) -> Outlook | None:
        """The highest forecast over the buckets in [from_s, to_s], and its kind (None: no forecast). A rise
        forecast counts only what has not risen in the last 2 x JITTER buckets (a batch that came a little early
        or late has come)."""
        kind, first = self.kind(), bucket(from_s)
        # A batch that came up to JITTER buckets early or late has come: what rose lately is taken off.
        came = max((self.rises.get(b, 0) for b in range(first - 2 * JITTER, first + 1)), default=0)
        found = [f - (came if kind is Kind.RISE and b <= first + 2 * JITTER else 0)
                 for b in range(first, bucket(to_s) + 1)
                 if (f := self.at(b * RESOLUTION_S + RESOLUTION_S / 2)) is not None]
        return Outlook(kind, max(0.0, max(found))) if found and kind is not None else None

    def commit(self, now_s: float, lead_s: float) -> None:
        """Keep the forecast for the bucket `lead_s` ahead, to be scored once it has been seen (the first
        forecast made for a bucket counts)."""
        b = bucket(now_s + lead_s)
        kind = self.kind()
        if b not in self.pending and kind is not None and (f := self.at(b * RESOLUTION_S)) is not None:
            self.pending[b] = (kind, f)

    # -- how right it is --

    def error_recent(self) -> float | None:
        """Weighted absolute percentage error of the last RECENT_SCORES scored forecasts."""
        return wape(list(self.scores)[-RECENT_SCORES:])

    def error_day(self, now_s: float) -> float | None:
        """The same over the scores of the last 24 hours."""
        since = bucket(now_s - 86400)
        return wape([s for s in self.scores if s[0] >= since])

    # -- persistence --

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe copy of what was learnt (`from_dict` reads it back)."""
        return {"version": VERSION, "recent": [[k, v] for k, v in sorted(self.recent.items())],
                "slot": list(self.slot) if self.slot else None, "slot_sum": self.slot_sum,
                "slot_n": self.slot_n,
                "weekly": self.weekly, "weekly_n": self.weekly_n, "daily": self.daily, "daily_n": self.daily_n,
                "pending": [[k, str(kind), f] for k, (kind, f) in sorted(self.pending.items())],
                "rises": [[k, v] for k, v in sorted(self.rises.items())],
                "last": list(self.last) if self.last else None,
                "scores": [list(s) for s in self.scores], "scored_to": self.scored_to}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], zone: tzinfo | None = None) -> Forecaster:
        """What `to_dict` wrote. Raises ValueError on anything else (a damaged or foreign file)."""
        try:
            if data["version"] != VERSION:
                raise ValueError(f"version {data['version']!r}, expected {VERSION}")
            f = cls(zone)
            f.recent = {int(k): int(v) for k, v in data["recent"]}
            f.slot = (int(data["slot"][0]), int(data["slot"][1])) if data["slot"] else None
            f.slot_sum, f.slot_n = int(data["slot_sum"]), int(data["slot_n"])
            f.weekly, f.weekly_n = _profile(data["weekly"], data["weekly_n"], 7 * SLOTS_PER_DAY)
            f.daily, f.daily_n = _profile(data["daily"], data["daily_n"], SLOTS_PER_DAY)
            f.pending = {int(k): (Kind(kind), float(v)) for k, kind, v in data["pending"]}
            f.rises = {int(k): int(v) for k, v in data["rises"]}
            f.last = (int(data["last"][0]), int(data["last"][1])) if data["last"] else None
            f.scores.extend((int(b), float(p), int(s)) for b, p, s in data["scores"])
            f.scored_to = int(data["scored_to"])
        except (KeyError, TypeError, IndexError) as exc:
            raise ValueError(f"not a forecast: {exc!r}") from None
        if f.recent:
            f.period = find_period(f.rises, max(f.recent))
        return f


def bucket(when_s: float) -> int:
    return math.floor(when_s / RESOLUTION_S)


def local_slot(when_s: float, zone: tzinfo) -> tuple[int, int]:
    """(local day number since 1970-01-01, SLOT_S slot of the local day) at wall-clock `when_s`."""
    local = datetime.fromtimestamp(when_s, zone)
    seconds = local.hour * 3600 + local.minute * 60 + local.second
    return local.date().toordinal() - 719163, min(SLOTS_PER_DAY - 1, int(seconds // SLOT_S))


def find_period(recent: Mapping[int, int], now_bucket: int) -> Period | None:
    """The short regular period of the recent series (see the module docstring), or None."""
    # Only buckets whose smoothing window has been seen whole (a batch due in the next JITTER buckets must not
    # read as missing), the bucket under way excluded.
    seen = [k for k in recent if k <= now_bucket - 1 - JITTER]
    if len(seen) < 2:
        return None
    first = min(seen)
    span = now_bucket - first + 1
    lo = max(2, math.ceil(MIN_PERIOD_S / RESOLUTION_S))
    hi = min(int(MAX_PERIOD_S / RESOLUTION_S), span // MIN_REPEATS)
    if hi < lo:
        return None
    smooth = {k: max(recent.get(i, 0) for i in range(k - JITTER, k + JITTER + 1)) for k in seen}
    mean = statistics.fmean(smooth.values())
    dev = {k: v - mean for k, v in smooth.items()}
    var = statistics.fmean(d * d for d in dev.values())
    if var == 0:
        return None
    found: dict[int, float] = {}
    for lag in range(lo, hi + 1):
        pairs = [d * e for k, d in dev.items() if (e := dev.get(k - lag)) is not None]
        if len(pairs) >= (MIN_REPEATS - 1) * lag // 2:
            found[lag] = statistics.fmean(pairs) / var
    if not found or (best := max(found.values())) < MIN_CORRELATION:
        return None
    lag = min(k for k, r in found.items() if r >= NEAR_BEST * best)
    return Period(lag * RESOLUTION_S, min(1.0, found[lag]))


def wape(scores: list[tuple[int, float, int]]) -> float | None:
    """sum |forecast - seen| / sum seen (None: under MIN_SCORES scores; 0 seen counts as 1)."""
    if len(scores) < MIN_SCORES:
        return None
    return sum(abs(p - s) for _, p, s in scores) / max(1, sum(s for _, _, s in scores))


def _blend(old: float | None, new: float) -> float:
    return float(new) if old is None else (1 - PROFILE_WEIGHT) * old + PROFILE_WEIGHT * new


def _profile(values: Any, counts: Any, size: int) -> tuple[list[float | None], list[int]]:
    if len(values) != size or len(counts) != size:
        raise ValueError(f"a profile of {len(values)} slots, expected {size}")
    return [None if v is None else float(v) for v in values], [int(n) for n in counts]

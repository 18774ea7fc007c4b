"""SCHEDULE and SCHEDULE_TIMEZONE (pure but for reading the host's zone once): time windows with a floor
and/or a ceiling on a pool's workers.

The form, entries separated by `;`:

    DAYS HH:MM-HH:MM [min=N] [max=N]

- DAYS: `*` (every day), or days (`Mon` .. `Sun`, any case), ranges (`Mon-Fri`, `Fri-Mon` wraps) and
  lists of them (`Sat,Sun`, `Mon,Wed-Fri`): the days a window *opens* on.
- HH:MM-HH:MM: local time in SCHEDULE_TIMEZONE, the end exclusive; an end at or before the start ends the
  next day (`22:00-06:00` is a night), `24:00` is the end of the day (`00:00-24:00`: all day).
- `min=N` raises the pool's target to N at least (a floor), `max=N` lowers it to N at most (a ceiling), each
  within [MIN_PROCESSES, MAX_PROCESSES] (checked with them, `dqagent.settings.config`).

Evaluation (which windows are in force at an instant, the pre-warm, the next change) is
`dqagent.core.schedule`'s. A bad entry is refused in one line naming the entry, its column and the form.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from datetime import UTC, tzinfo
from functools import cache
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from dqagent.errors import ConfigError

DAY_NAMES = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
#: The accepted form, quoted in every refusal.
FORM = "an entry is DAYS HH:MM-HH:MM min=N and/or max=N, entries separated by ; (e.g. Mon-Fri 08:00-18:00 min=4)"
_DAYS_ACCEPTED = "expected * or days Mon..Sun, ranges and lists (Mon-Fri, Sat,Sun, Fri-Mon)"
_HOURS_RE = re.compile(r"(\d{1,2}):(\d{2})-(\d{1,2}):(\d{2})")
_BOUND_RE = re.compile(r"(min|max)=(\d{1,4})", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class Window:
    """One entry: the weekdays it opens on (0 = Monday), its minutes after local midnight, its bounds."""

    days: frozenset[int]
    #: Opens at this minute of the day (0..1439).
    start_min: int
    #: Ends at this minute (1..1440); at or before `start_min`: the next day.
    end_min: int
    floor: int | None
    ceiling: int | None
    #: The entry as written (normalised spaces), for logs and status.
    text: str

    @property
    def overnight(self) -> bool:
        return self.end_min <= self.start_min


@dataclass(frozen=True, slots=True)
class Schedule:
    """SCHEDULE's windows (empty: no schedule); its clock is SCHEDULE_TIMEZONE's (`zone_for`)."""

    windows: tuple[Window, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.windows)

    def __str__(self) -> str:
        return "; ".join(w.text for w in self.windows)


def parse_schedule(key: str, raw: str) -> Schedule:
    """SCHEDULE's text into its windows; raises `ConfigError` naming the entry (1-based) and its column."""
    windows: list[Window] = []
    entries = [e.strip() for e in raw.split(";")]
    for i, entry in enumerate((e for e in entries if e), start=1):
        windows.append(_entry(f"{key} entry {i}", entry))
    return Schedule(tuple(windows))


def _entry(where: str, entry: str) -> Window:
    parts = entry.split()
    if len(parts) < 3:
        raise ConfigError(where, entry, f"expected days, hours and min=N and/or max=N; {FORM}")
    days, hours, *bounds = parts
    start, end = _hours(f"{where} (hours)", hours)
    found: dict[str, int] = {}
    for b in bounds:
        m = _BOUND_RE.fullmatch(b)
        if m is None or m[1].lower() in found:
            raise ConfigError(f"{where} (bounds)", b, f"expected min=N and/or max=N, each once; {FORM}")
        found[m[1].lower()] = int(m[2])
    floor, ceiling = found.get("min"), found.get("max")
    if floor is not None and ceiling is not None and floor > ceiling:
        raise ConfigError(f"{where} (bounds)", " ".join(bounds), "expected min=N <= max=N in one entry")
    return Window(_days(f"{where} (days)", days), start, end, floor, ceiling, " ".join(parts))


def _days(where: str, text: str) -> frozenset[int]:
    if text == "*":
        return frozenset(range(7))
    out: set[int] = set()
    lower = [d.lower() for d in DAY_NAMES]
    for part in text.split(","):
        ends = part.split("-")
        if len(ends) > 2 or any(e.lower() not in lower for e in ends):
            raise ConfigError(where, text, _DAYS_ACCEPTED)
        a, b = (lower.index(e.lower()) for e in (ends[0], ends[-1]))
        out.update((a + k) % 7 for k in range((b - a) % 7 + 1))
    return frozenset(out)


def _hours(where: str, text: str) -> tuple[int, int]:
    m = _HOURS_RE.fullmatch(text)
    accepted = f"expected HH:MM-HH:MM, 00:00..23:59 and an end up to 24:00, not equal to the start; {FORM}"
    if m is None:
        raise ConfigError(where, text, accepted)
    h0, m0, h1, m1 = (int(g) for g in m.groups())
    start, end = h0 * 60 + m0, h1 * 60 + m1
    if h0 > 23 or m0 > 59 or m1 > 59 or end > 1440 or start == end:
        raise ConfigError(where, text, accepted)
    return start, end


def check_bounds(key: str, schedule: Schedule, lo: int, hi: int) -> None:
    """Every floor and ceiling within [lo, hi] (MIN_PROCESSES, MAX_PROCESSES); raises `ConfigError` naming the
    entry."""
    for i, w in enumerate(schedule.windows, start=1):
        for name, value in (("min", w.floor), ("max", w.ceiling)):
            if value is not None and not lo <= value <= hi:
                raise ConfigError(f"{key} entry {i} (bounds)", f"{name}={value}",
                                  f"expected {name}=N with N in {lo}..{hi} (MIN_PROCESSES..MAX_PROCESSES)")


def parse_timezone(key: str, raw: str) -> str:
    """An IANA zone name (`Europe/Berlin`, `UTC`), or "" for the host's zone."""
    name = raw.strip()
    if name:
        try:
            zone_for(name)
        except (ZoneInfoNotFoundError, ValueError):
            raise ConfigError(key, raw, "expected an IANA time zone (e.g. Europe/Berlin, America/New_York, UTC), "
                              "or empty for the host's zone") from None
    return name


@cache
def zone_for(name: str) -> tzinfo:
    """The zone named `name`, or the host's (TZ, else /etc/localtime, else UTC) for "" (read once)."""
    if name:
        return ZoneInfo(name)
    tz = os.environ.get("TZ", "").lstrip(":")
    if tz:
        try:
            return ZoneInfo(tz)
        except (ZoneInfoNotFoundError, ValueError):
            pass
    local = Path("/etc/localtime")
    try:
        target = str(local.resolve())
        if "zoneinfo/" in target:
            return ZoneInfo(target.split("zoneinfo/", 1)[1])
        with local.open("rb") as f:
            return ZoneInfo.from_file(f, key="localtime")
    except (OSError, ValueError, ZoneInfoNotFoundError):
        return UTC

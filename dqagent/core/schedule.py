"""Which SCHEDULE windows are in force at an instant, and when that changes (pure: the caller gives the time).

The step (`dqagent.core.step`, rule 4) asks `in_force` at each check with the wall clock it observed
(`Observed.now_us`) and bounds the policy's target with the answer (`InForce.bound`): the highest floor of the
windows in force raises it, the lowest ceiling lowers it, and where a floor is above a ceiling the floor wins
(a floor is capacity promised for a time; a ceiling only stops growth). Floors and ceilings are within
[MIN_PROCESSES, MAX_PROCESSES] (`dqagent.settings.schedule.check_bounds`).

A window's times are read on the clock of its zone, with the IANA rules (`zoneinfo`), so a window follows
daylight-saving changes as a wall clock does: `22:00-06:00` lasts 7 h on the night the clocks spring forward
and 9 h on the night they fall back. A time the clock skips (02:30 in a spring-forward gap) is the jump itself
(the window opens or ends at 03:00); a time the clock shows twice (02:30 when it falls back) opens a window at
its first showing and ends one at its last, so no window ends early or opens twice.

Pre-warm: a window's floor applies `lead_s` before the window opens (the time a start takes, measured, plus
PROCESS_STARTUP_DELAY: `dqagent.core.step`), so its workers run when it opens. Ceilings apply when the window
opens, and both end when it ends. `next_us` is the next instant any of this changes: the step reads again then.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, tzinfo

from dqagent.settings.schedule import Schedule, Window

#: Days ahead searched for the next change (every window opens at least once a week).
HORIZON_DAYS = 8


@dataclass(frozen=True, slots=True)
class InForce:
    """The schedule at one instant: its floor and ceiling (None: none), and the windows that set them."""

    floor: int | None
    ceiling: int | None
    #: The windows open now (as written).
    windows: tuple[str, ...]
    #: The windows not open yet whose floor already applies (pre-warm).
    warming: tuple[str, ...]
    #: Wall-clock microseconds of the next change (a window opens, ends or starts its pre-warm); None: none.
    next_us: float | None

    def bound(self, target: int) -> int:
        """`target` with the ceiling, then the floor, applied (the floor wins where they disagree)."""
        if self.ceiling is not None:
            target = min(target, self.ceiling)
        if self.floor is not None:
            target = max(target, self.floor)
        return target

    @property
    def active(self) -> bool:
        return bool(self.windows or self.warming)

    def bounds_text(self) -> str:
        """`min=4 max=6`, `min=4`, or `no bound`."""
        parts = [f"{k}={v}" for k, v in (("min", self.floor), ("max", self.ceiling)) if v is not None]
        return " ".join(parts) or "no bound"


def reads(t: float, zone: tzinfo) -> datetime:
    """What the clock of `zone` shows at `t` (epoch seconds), as a naive datetime."""
    return datetime.fromtimestamp(t, zone).replace(tzinfo=None, fold=0)


def instant(naive: datetime, zone: tzinfo, *, first: bool) -> float:
    """Epoch seconds when the clock of `zone` shows `naive`: its first showing (`first`) or its last; a time the
    clock skips is the instant of the jump."""
    a = naive.replace(tzinfo=zone, fold=0).timestamp()
    b = naive.replace(tzinfo=zone, fold=1).timestamp()
    lo, hi = min(a, b), max(a, b)
    if reads(lo, zone) == naive:
        return lo if first else hi
    below, above = math.floor(lo), math.ceil(hi)  # the gap: the first second the clock reads past `naive`
    while above - below > 1:
        mid = (below + above) // 2
        if reads(mid, zone) >= naive:
            above = mid
        else:
            below = mid
    return float(above)


def occurrence(w: Window, zone: tzinfo, day: date) -> tuple[float, float] | None:
    """When `w`, opening on `day` (local), opens and ends (epoch seconds); None if it does not open that day."""
    if day.weekday() not in w.days:
        return None
    midnight = datetime.combine(day, time())
    start = instant(midnight + timedelta(minutes=w.start_min), zone, first=True)
    end = instant(midnight + timedelta(days=1 if w.overnight else 0, minutes=w.end_min), zone, first=False)
    return start, end


def in_force(schedule: Schedule, zone: tzinfo, now_us: float, lead_s: float = 0.0) -> InForce:
    """The floor, ceiling and windows at `now_us` (wall-clock microseconds), floors `lead_s` early."""
    t = now_us / 1e6
    today = reads(t, zone).date()
    floors: list[int] = []
    ceilings: list[int] = []
    open_now: list[str] = []
    warming: list[str] = []
    nxt: float | None = None
    for w in schedule.windows:
        for k in range(-1, HORIZON_DAYS + 1):
            occ = occurrence(w, zone, today + timedelta(days=k))
            if occ is None:
                continue
            start, end = occ
            early = start - lead_s if w.floor is not None else start
            if early <= t < end:
                (open_now if start <= t else warming).append(w.text)
                if w.floor is not None:
                    floors.append(w.floor)
                if w.ceiling is not None and start <= t:
                    ceilings.append(w.ceiling)
            later = [e for e in (early, start, end) if e > t]
            if later and (nxt is None or min(later) < nxt):
                nxt = min(later)
    return InForce(max(floors) if floors else None, min(ceilings) if ceilings else None,
                   tuple(dict.fromkeys(open_now)), tuple(w for w in dict.fromkeys(warming) if w not in open_now),
                   nxt * 1e6 if nxt is not None else None)


def next_change(schedule: Schedule, zone: tzinfo, now_us: float, lead_s: float = 0.0
                ) -> tuple[float, InForce] | None:
    """The next instant the floor, ceiling or windows in force differ from now's, and what is in force then."""
    now = in_force(schedule, zone, now_us, lead_s)
    at = now.next_us
    for _ in range(4 * len(schedule.windows) * (HORIZON_DAYS + 1)):
        if at is None:
            return None
        then = in_force(schedule, zone, at, lead_s)
        if (then.floor, then.ceiling, then.windows, then.warming) != (now.floor, now.ceiling, now.windows,
                                                                      now.warming):
            return at, then
        at = then.next_us
    return None


def local_text(us: float, zone: tzinfo) -> str:
    """`Mon 08:00 CET`: an instant on the schedule's clock, for STATUS= and `dqagent status`."""
    return datetime.fromtimestamp(us / 1e6, zone).strftime("%a %H:%M %Z").strip()


def status_note(f: InForce, zone: tzinfo) -> str:
    """STATUS='s part: `schedule Mon-Fri 08:00-18:00 min=4 (min=4), next change Mon 18:00 CET`."""
    if f.windows:
        what = f"schedule {' + '.join(f.windows)} ({f.bounds_text()})"
    elif f.warming:
        what = f"schedule pre-warming {' + '.join(f.warming)} ({f.bounds_text()})"
    else:
        what = "schedule: no window"
    return what + (f", next change {local_text(f.next_us, zone)}" if f.next_us is not None else "")

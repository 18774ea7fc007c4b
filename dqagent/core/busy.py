"""Which worker is busy (pure): the workers' own reports, the least-busy stop order, and the hung rule.

The reports come from `dqagent.dramatiq.WorkerReport` in the application (one JSON file per Dramatiq process
in the unit's runtime directory, read by `dqagent.host.reports`). They are untrusted input: a report that
does not parse, or has a number out of bounds, is skipped.

- **Load** (`Load`, per unit): messages running and prefetched, summed over its processes, and its oldest
  process's heartbeat (wall-clock seconds).
- **Stop order** (`stop_order`): among settled units, a hung one first (it serves nothing), then idle, then
  one without a report (most often just started; an app without the opt-in has none anywhere, and then the
  order is exactly the old one), then one with prefetched messages only, then the fewest running; ties by
  the highest instance number (the old order). So a unit running a task is never stopped while an idle one
  can be.
- **Hung** (`sight`, `hung`): a settled unit that has reported in its current activation, whose heartbeat
  has not advanced for `after_s` seconds of the agent's own monotonic clock (not the report's clock, so a
  wall-clock step never looks like a hang), including one whose reports vanished. A busy worker keeps
  beating (the report thread runs beside the tasks), so a long task never looks hung.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import IntEnum

from dqagent.core.untrusted import ascii_int

#: Bounds of a report's figures: a larger number is not a report of a real worker.
MAX_COUNT = 1_000_000
#: Longest report file taken (a real one is about 100 bytes).
MAX_REPORT_BYTES = 4096


class Rank(IntEnum):
    """How much a stop would cost, cheapest first (see the module docstring)."""

    HUNG = 0
    IDLE = 1
    UNKNOWN = 2
    PREFETCHED = 3
    RUNNING = 4


@dataclass(frozen=True, slots=True)
class ProcessReport:
    """One Dramatiq process's report."""

    pid: int
    running: int
    prefetched: int
    done: int
    heartbeat_s: float


@dataclass(frozen=True, slots=True)
class Load:
    """One unit's reports together: what its processes run and hold, and the oldest heartbeat."""

    running: int
    prefetched: int
    processes: int
    done: int
    heartbeat_s: float

    @property
    def idle(self) -> bool:
        return self.running == 0 and self.prefetched == 0

    @property
    def rank(self) -> Rank:
        return Rank.RUNNING if self.running else Rank.PREFETCHED if self.prefetched else Rank.IDLE

    def describe(self) -> str:
        """For the decision line: `idle`, `2 prefetched`, `1 running, 4 prefetched`."""
        if self.idle:
            return "idle"
        if not self.running:
            return f"{self.prefetched} prefetched"
        return f"{self.running} running, {self.prefetched} prefetched"


def parse_report(raw: bytes) -> ProcessReport | None:
    """A report file's content, or None when it is not a valid report (untrusted: never raises)."""
    if len(raw) > MAX_REPORT_BYTES:
        return None
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError):
        return None
    if not isinstance(data, dict):
        return None
    counts = [ascii_int(data.get(k), 0, MAX_COUNT) for k in ("running", "prefetched", "done")]
    pid = ascii_int(data.get("pid"), 1, 2**22)
    beat = data.get("heartbeat")
    if pid is None or None in counts or isinstance(beat, bool) or not isinstance(beat, int | float) \
            or not 0 < beat < 1e11:
        return None
    running, prefetched, done = (c or 0 for c in counts)
    return ProcessReport(pid, running, prefetched, done, float(beat))


def combine(reports: Iterable[ProcessReport]) -> Load | None:
    """One unit's processes together; None when there is no report."""
    got = list(reports)
    if not got:
        return None
    return Load(running=sum(r.running for r in got), prefetched=sum(r.prefetched for r in got),
                processes=len(got), done=sum(r.done for r in got), heartbeat_s=min(r.heartbeat_s for r in got))


def rank_of(n: int, loads: Mapping[int, Load], hung: Collection[int]) -> Rank:
    if n in hung:
        return Rank.HUNG
    load = loads.get(n)
    return Rank.UNKNOWN if load is None else load.rank


def stop_order(candidates: Iterable[int], loads: Mapping[int, Load],
               hung: Collection[int] = frozenset()) -> list[int]:
    """`candidates` (settled instance numbers) in the order to stop them (see the module docstring)."""
    def key(n: int) -> tuple[int, int, int, int]:
        load = loads.get(n)
        return (rank_of(n, loads, hung), load.running if load else 0, load.prefetched if load else 0, -n)

    return sorted(candidates, key=key)


def stop_note(chosen: Sequence[int], candidates: Collection[int], loads: Mapping[int, Load],
              hung: Collection[int], name: str = "{}") -> str:
    """Why these units were chosen, for the decision line: `stops @4 (idle), @2 (no report)`, and
    `every candidate busy` when none of the candidates was idle (or hung) and all had reported."""
    if not chosen:
        return ""
    parts = [f"{name.format(n)} ({'hung' if n in hung else loads[n].describe() if n in loads else 'no report'})"
             for n in chosen]
    return "stops " + ", ".join(parts) + ("; every candidate busy" if all_busy(candidates, loads, hung) else "")


def all_busy(candidates: Collection[int], loads: Mapping[int, Load], hung: Collection[int] = frozenset()) -> bool:
    """Every candidate reported and none is idle (nor hung): a stop interrupts or requeues something."""
    return bool(candidates) and all(rank_of(n, loads, hung) >= Rank.PREFETCHED for n in candidates)


# -- hung workers ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Sighting:
    """The last heartbeat seen from one unit in its current activation, and when (agent's monotonic clock)
    it last advanced."""

    active_enter_us: int
    heartbeat_s: float
    advanced_s: float


def sight(previous: Mapping[int, Sighting], running: Mapping[int, int], loads: Mapping[int, Load],
          now_s: float) -> dict[int, Sighting]:
    """The sightings after this read. `running`: each running unit's ActiveEnterTimestamp (a new activation
    starts afresh); `loads`: this read's reports. A unit whose report vanished keeps its last sighting."""
    out: dict[int, Sighting] = {}
    for n, entered in running.items():
        before = previous.get(n)
        same = before is not None and before.active_enter_us == entered
        load = loads.get(n)
        if load is None:
            if same and before is not None:
                out[n] = before
        elif same and before is not None and load.heartbeat_s <= before.heartbeat_s:
            out[n] = before
        else:
            out[n] = Sighting(entered, load.heartbeat_s, now_s)
    return out


def hung(sightings: Mapping[int, Sighting], settled: Collection[int], now_s: float,
         after_s: float | None) -> frozenset[int]:
    """Settled units whose heartbeat has not advanced for `after_s` seconds (None: the rule is off)."""
    if after_s is None:
        return frozenset()
    return frozenset(n for n in settled if (s := sightings.get(n)) is not None and now_s - s.advanced_s >= after_s)


def status_of(load: Load | None, now_s: float, hung_after_s: float | None) -> dict[str, object] | None:
    """One unit's report as `dqagent status` shows it (None: no report). `now_s`: wall-clock seconds (status
    runs in its own process, so it ages the heartbeat by the clock; the agent judges hangs by its own)."""
    if load is None:
        return None
    seen_s = round(max(0.0, now_s - load.heartbeat_s), 1)
    return {"running": load.running, "prefetched": load.prefetched, "processes": load.processes,
            "done": load.done, "last_seen_s": seen_s, "state": "idle" if load.idle else "busy",
            "hung": hung_after_s is not None and seen_s >= hung_after_s}


def status_text(report: Mapping[str, object] | None) -> str:
    """The status line's part for one unit's report: `busy: 2 running, 0 prefetched, seen 0.4s ago`."""
    if not report:
        return ""
    hung = f", HUNG: no report for {report['last_seen_s']}s" if report.get("hung") else ""
    return (f"{report['state']}: {report['running']} running, {report['prefetched']} prefetched, "
            f"seen {report['last_seen_s']}s ago{hung}")

"""Schedules and pauses on a daily workload (`python -m dqagent.sim.daily`): what a floor before the morning
rush and a ceiling at night change in cost and waiting, through the agent's own step (rule 4,
`dqagent.core.schedule`), and what an operator's pause or maintenance window costs in waiting (rule 4b,
`dqagent.core.pause`).

The day (local time, UTC): a quiet night at 0.2/s with a batch of 3,000 messages at 23:00, a morning rush from
08:00 (a step to 8/s for an hour), 2/s through the day, 1/s in the evening; 2 s tasks on workers of 5 threads
that take 30 s to start (an application that imports a lot), MIN 1, MAX 10, `SCALING_POLICY=target` at its
defaults. The simulated wall clock begins at `EPOCH_US` (17:25:11.6 UTC), so the day begins at the next
midnight. Schedule rows: no schedule; `* 08:00-10:00 min=6` (its workers pre-warm: PROCESS_STARTUP_DELAY = the
30 s start before 08:00); `* 22:00-06:00 max=2`; both. Pause rows (`PAUSE_ROWS`): `dqagent pause --for 30m` at
07:50, across the rush's start; `dqagent pause --at 0 --for 30m` at 14:00; the 07:50 pause with the floor.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass, replace

from dqagent.core.pause import Pause
from dqagent.settings.parsers import DEFAULT_POOL
from dqagent.settings.schedule import parse_schedule
from dqagent.sim.agenttick import EPOCH_S
from dqagent.sim.bench import percentile, target_policy
from dqagent.sim.model import PoolConfig, Result, simulate
from dqagent.sim.pool import EPOCH_US
from dqagent.sim.traces import Trace, Workload, generate

H = 3600.0
#: Seconds from the simulated clock's start to the next midnight UTC: the day's 00:00.
MIDNIGHT_S = 86400 - (EPOCH_US / 1e6) % 86400
POOL = PoolConfig(threads=5, prefetch=10, startup_delay_s=30.0, min_workers=1, max_workers=10, dispatch="first")
FLOOR = "* 08:00-10:00 min=6"
ROWS = (("no schedule", ""), ("floor before the rush", FLOOR),
        ("night ceiling", "* 22:00-06:00 max=2"), ("both", f"{FLOOR}; * 22:00-06:00 max=2"))
#: The rush's first quarter hour (simulated seconds), whose waits the tables show.
RUSH_S = (MIDNIGHT_S + 8 * H, MIDNIGHT_S + 8.25 * H)
PAUSE_MIN = 30


def pause(at_h: float, at: int | None = None, minutes: float = PAUSE_MIN) -> Pause:
    """`dqagent pause [--at N] --for <minutes>m` made at `at_h` o'clock of the simulated day."""
    since = EPOCH_S + MIDNIGHT_S + at_h * H
    return Pause(DEFAULT_POOL, 0, "root", "deploy" if at is None else "migration", since, since + minutes * 60, at)


#: (name, schedule, the pause).
PAUSE_ROWS = (("pause 07:50-08:20", "", pause(7 + 50 / 60)),
              ("pause --at 0, 14:00-14:30", "", pause(14.0, at=0)),
              ("pause 07:50-08:20 with the floor", FLOOR, pause(7 + 50 / 60)))


def day_trace() -> Trace:
    m = MIDNIGHT_S
    points = ((0, 0.0), (m, 0.2), (m + 6 * H, 0.2), (m + 8 * H - 1, 0.5), (m + 8 * H, 8.0), (m + 9 * H, 8.0),
              (m + 9.5 * H, 2.0), (m + 18 * H, 2.0), (m + 19 * H, 1.0), (m + 22 * H, 1.0), (m + 22.5 * H, 0.2))
    return Trace("day", m + 24 * H, points, bursts=((m + 23 * H, 3000),), service_mean_s=2.0, service_cv=1.0,
                 description="a day: night 0.2/s + 3,000 at 23:00, rush 8/s 08:00-09:00, day 2/s, evening 1/s")


def simulate_day(workload: Workload, schedule: str, pauses: Sequence[Pause] = ()) -> Result:
    """The day through the agent's step with `schedule` and `pauses`; every message started."""
    pool = replace(POOL, schedule=parse_schedule("SCHEDULE", schedule), schedule_timezone="UTC")
    result = simulate(workload, target_policy(pool), pool, 5.0, adaptive_reads=True, pauses=pauses)
    assert len(result.waits_s) == len(workload), "every message started"
    return result


def sim_s(wall_s: float) -> float:
    """A wall-clock time (a pause's since_s or until_s) on the simulation's clock."""
    return wall_s - EPOCH_S


@dataclass(frozen=True, slots=True)
class Row:
    name: str
    schedule: str
    worker_h: float
    p50_s: float
    p95_s: float
    rush_p95_s: float
    rush_max_s: float
    night_batch_s: float
    #: With a pause: the longest wait of a message that arrived during it, the messages that arrived before its
    #: end and had not started at its end, and how long after its end the last of them started (0 without).
    pause_max_s: float = 0.0
    waiting_at_end: int = 0
    served_s: float = 0.0


def row(name: str, schedule: str, workload: Workload, result: Result, paused: Pause | None = None) -> Row:
    waits, arrivals = result.waits_s, workload.arrivals_s
    rush = [w for a, w in zip(arrivals, waits, strict=True) if RUSH_S[0] <= a < RUSH_S[1]]
    out = Row(name, schedule, result.worker_seconds / H, percentile(waits, 0.5), percentile(waits, 0.95),
              percentile(rush, 0.95), max(rush), result.burst_drain_s[0] if result.burst_drain_s else 0.0)
    if paused is None or paused.until_s is None:
        return out
    since, end = sim_s(paused.since_s), sim_s(paused.until_s)
    late = [a + w - end for a, w in zip(arrivals, waits, strict=True) if a <= end < a + w]
    during = [w for a, w in zip(arrivals, waits, strict=True) if since <= a < end]
    return replace(out, pause_max_s=max(during), waiting_at_end=len(late), served_s=max(late, default=0.0))


def run(name: str, schedule: str, workload: Workload, paused: Pause | None = None) -> Row:
    return row(name, schedule, workload, simulate_day(workload, schedule, () if paused is None else (paused,)),
               paused)


def table(seed: int = 1) -> list[Row]:
    """The schedule rows (`ROWS`), then the pause rows (`PAUSE_ROWS`)."""
    workload = generate(day_trace(), seed)
    return ([run(name, schedule, workload) for name, schedule in ROWS]
            + [run(name, schedule, workload, p) for name, schedule, p in PAUSE_ROWS])


def _name(r: Row) -> str:
    return f"{r.name} (`{r.schedule}`)" if r.schedule else r.name


def _wait(s: float) -> str:
    return f"{s:.1f} s" if s < 60 else f"{s / 60:.1f} min"


def markdown(rows: Sequence[Row]) -> str:
    """The schedule table, then the pause table (the first row, no schedule and no pause, as its reference)."""
    out = ["| schedule | worker-hours | p50 wait | p95 wait | 08:00-08:15: p95 / max wait | 23:00 batch drained in |",
           "|---|---|---|---|---|---|"]
    for r in rows[:len(ROWS)]:
        out.append(f"| {_name(r)} | {r.worker_h:.1f} | {r.p50_s:.2f} s | {r.p95_s:.1f} s "
                   f"| {r.rush_p95_s:.1f} s / {r.rush_max_s:.0f} s | {r.night_batch_s / 60:.1f} min |")
    out += ["", "| pause (30 min) | worker-hours | p95 wait | 08:00-08:15: p95 / max wait | max wait of a message "
                "arriving in the pause | waiting at its end | all of them started by |",
            "|---|---|---|---|---|---|---|"]
    for r in [rows[0], *rows[len(ROWS):]]:
        base = r is rows[0]
        end = "- | - | -" if base else (f"{_wait(r.pause_max_s)} | {r.waiting_at_end:,} "
                                         f"| {_wait(r.served_s)} after it")
        out.append(f"| {'no pause, no schedule' if base else _name(r)} | {r.worker_h:.1f} | {_wait(r.p95_s)} "
                   f"| {_wait(r.rush_p95_s)} / {_wait(r.rush_max_s)} | {end} |")
    return "\n".join(out) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    print(markdown(table(int(args[0]) if args else 1)), end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

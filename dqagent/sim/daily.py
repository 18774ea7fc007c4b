"""Schedules on a daily workload (`python -m dqagent.sim.daily`): what a floor before the morning rush and a
ceiling at night change in cost and waiting, through the agent's own step (rule 4, `dqagent.core.schedule`).

The day (local time, UTC): a quiet night at 0.2/s with a batch of 3,000 messages at 23:00, a morning rush from
08:00 (a step to 8/s for an hour), 2/s through the day, 1/s in the evening; 2 s tasks on workers of 5 threads
that take 30 s to start (an application that imports a lot), MIN 1, MAX 10, `SCALING_POLICY=target` at its
defaults. The simulated wall clock begins at `EPOCH_US` (17:25:11.6 UTC), so the day begins at the next
midnight. Rows: no schedule; `* 08:00-10:00 min=6` (its workers pre-warm: PROCESS_STARTUP_DELAY = the 30 s
start before 08:00); `* 22:00-06:00 max=2`; both.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass, replace

from dqagent.settings.schedule import parse_schedule
from dqagent.sim.bench import percentile, target_policy
from dqagent.sim.model import PoolConfig, simulate
from dqagent.sim.pool import EPOCH_US
from dqagent.sim.traces import Trace, Workload, generate

H = 3600.0
#: Seconds from the simulated clock's start to the next midnight UTC: the day's 00:00.
MIDNIGHT_S = 86400 - (EPOCH_US / 1e6) % 86400
POOL = PoolConfig(threads=5, prefetch=10, startup_delay_s=30.0, min_workers=1, max_workers=10, dispatch="first")
ROWS = (("no schedule", ""), ("floor before the rush", "* 08:00-10:00 min=6"),
        ("night ceiling", "* 22:00-06:00 max=2"), ("both", "* 08:00-10:00 min=6; * 22:00-06:00 max=2"))


def day_trace() -> Trace:
    m = MIDNIGHT_S
    points = ((0, 0.0), (m, 0.2), (m + 6 * H, 0.2), (m + 8 * H - 1, 0.5), (m + 8 * H, 8.0), (m + 9 * H, 8.0),
              (m + 9.5 * H, 2.0), (m + 18 * H, 2.0), (m + 19 * H, 1.0), (m + 22 * H, 1.0), (m + 22.5 * H, 0.2))
    return Trace("day", m + 24 * H, points, bursts=((m + 23 * H, 3000),), service_mean_s=2.0, service_cv=1.0,
                 description="a day: night 0.2/s + 3,000 at 23:00, rush 8/s 08:00-09:00, day 2/s, evening 1/s")


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


def run(name: str, schedule: str, workload: Workload) -> Row:
    pool = replace(POOL, schedule=parse_schedule("SCHEDULE", schedule), schedule_timezone="UTC")
    result = simulate(workload, target_policy(pool), pool, 5.0, adaptive_reads=True)
    waits = result.waits_s
    assert len(waits) == len(workload), "every message started"
    m = MIDNIGHT_S
    rush = [w for a, w in zip(workload.arrivals_s, waits, strict=True) if m + 8 * H <= a < m + 8.25 * H]
    return Row(name, schedule, result.worker_seconds / H, percentile(waits, 0.5), percentile(waits, 0.95),
               percentile(rush, 0.95), max(rush), result.burst_drain_s[0])


def table(seed: int = 1) -> list[Row]:
    workload = generate(day_trace(), seed)
    return [run(name, schedule, workload) for name, schedule in ROWS]


def markdown(rows: Sequence[Row]) -> str:
    out = ["| schedule | worker-hours | p50 wait | p95 wait | 08:00-08:15: p95 / max wait | 23:00 batch drained in |",
           "|---|---|---|---|---|---|"]
    for r in rows:
        name = f"{r.name} (`{r.schedule}`)" if r.schedule else r.name
        out.append(f"| {name} | {r.worker_h:.1f} | {r.p50_s:.2f} s | {r.p95_s:.1f} s "
                   f"| {r.rush_p95_s:.1f} s / {r.rush_max_s:.0f} s | {r.night_batch_s / 60:.1f} min |")
    return "\n".join(out) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    print(markdown(table(int(args[0]) if args else 1)), end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

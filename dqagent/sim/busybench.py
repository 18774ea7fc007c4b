"""Which worker a scale-down stops (`python -m dqagent.sim.busybench`): today's highest number against the least
busy first (`dqagent.core.busy`, the app's `WorkerReport` opt-in), on the same runs (same workload and seed,
only `PoolConfig.reports` differs), through the agent's own step.

A stopped worker finishes its running tasks, but one still running at its shutdown timeout is cut short and
runs again (`PoolConfig.shutdown_timeout_s`: Dramatiq's `--worker-shutdown-timeout`, or dqagent's
GRACEFUL_SHUTDOWN_TIMEOUT SIGKILL, whichever comes first). Workloads:

- **long 15-75 s**: the issue's trial: units of 1 process x 2 threads, MIN 1, MAX 4, tasks of 15-75 s
  (lognormal, mean 45 s, CV 0.35), demand falling after each of 6 batches of 10 messages every 10 minutes;
  shutdown timeout 120 s (`--worker-shutdown-timeout 120000`), so nothing is cut short: the difference is in
  waits and worker-seconds.
- **jobs of minutes**: the same pool, jobs of about 10 minutes (lognormal, mean 600 s, CV 0.5: transcoding,
  reports), 6 batches of 6 jobs every 30 minutes; shutdown timeout 120 s: a stop that hits a running job cuts
  it short.
- **families**: the benchmark's drawn pools and traces (`dqagent.sim.families`, seed 1, cases 0-13) with
  dqagent's default GRACEFUL_SHUTDOWN_TIMEOUT of 30 s as the cut.

Columns: worker-seconds (the cost), p50 and p95 wait (arrival to start; a task run twice: to its second start),
tasks run twice (cut short and delivered again).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace

from dqagent.sim.bench import contenders, metrics, run
from dqagent.sim.families import draw_case
from dqagent.sim.model import PoolConfig, Result
from dqagent.sim.robust import pool_for
from dqagent.sim.traces import Trace, Workload, generate

LONG_POOL = PoolConfig(threads=2, prefetch=4, startup_delay_s=5.0, min_workers=1, max_workers=4, dispatch="poll",
                       shutdown_timeout_s=120.0)
LONG = Trace("long 15-75 s", 3600.0, ((0, 0.0),), bursts=tuple((600.0 * k, 10) for k in range(6)),
             service_mean_s=45.0, service_cv=0.35)
JOBS = Trace("jobs of minutes", 4 * 3600.0, ((0, 0.0),), bursts=tuple((1800.0 * k, 6) for k in range(6)),
             service_mean_s=600.0, service_cv=0.5)
FAMILY_CASES = range(14)
FAMILY_CUT_S = 30.0
POLICIES = ("step", "target")


@dataclass(frozen=True, slots=True)
class Row:
    workload: str
    policy: str
    order: str
    worker_s: float
    p50_wait_s: float
    p95_wait_s: float
    reruns: int


def cases() -> Iterator[tuple[str, Workload, PoolConfig]]:
    yield LONG.name, generate(LONG, 1), LONG_POOL
    yield JOBS.name, generate(JOBS, 1), LONG_POOL
    for k in FAMILY_CASES:
        case = draw_case(1, k)
        yield f"{case.family} #{k}", generate(case.trace, 1), replace(pool_for(case, "poll"),
                                                                        shutdown_timeout_s=FAMILY_CUT_S)


def rows(policies: Sequence[str] = POLICIES) -> list[Row]:
    """Every workload under every policy, both stop orders (the same workload and seed for both)."""
    out: list[Row] = []
    for name, workload, pool in cases():
        for policy in policies:
            for order, reports in (("highest number", False), ("least busy", True)):
                result: Result = run(contenders()[policy], workload, replace(pool, reports=reports))
                m = metrics(result, name, policy)
                out.append(Row(name, policy, order, m.worker_seconds, m.p50_s, m.p95_s, result.reruns))
    return out


def markdown(table: Sequence[Row]) -> str:
    lines = ["| workload | policy | stop order | worker-s | p50 wait s | p95 wait s | tasks run twice |",
             "|---|---|---|---:|---:|---:|---:|"]
    lines += [f"| {r.workload} | {r.policy} | {r.order} | {r.worker_s:,.0f} | {r.p50_wait_s:.1f} | "
              f"{r.p95_wait_s:.1f} | {r.reruns} |" for r in table]
    return "\n".join(lines)


def totals(table: Sequence[Row]) -> str:
    """Per policy: the sums over every workload, old order -> new order."""
    out = []
    for policy in sorted({r.policy for r in table}):
        old = [r for r in table if r.policy == policy and r.order == "highest number"]
        new = [r for r in table if r.policy == policy and r.order == "least busy"]
        out.append(f"{policy}: worker-s {sum(r.worker_s for r in old):,.0f} -> {sum(r.worker_s for r in new):,.0f}, "
                   f"tasks run twice {sum(r.reruns for r in old)} -> {sum(r.reruns for r in new)}, "
                   f"mean of p95 waits {sum(r.p95_wait_s for r in old) / len(old):.1f} -> "
                   f"{sum(r.p95_wait_s for r in new) / len(new):.1f} s")
    return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> int:
    table = rows()
    print(markdown(table))
    print()
    print(totals(table))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

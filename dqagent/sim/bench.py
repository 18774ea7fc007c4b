"""Every policy on every trace, one table, and the issue's targets checked. `python -m dqagent.sim.bench`.

Not a test: it prints figures. The seed defaults throughout: 5 threads per worker, 1..10 workers,
2 s mean service time, 5 s startup delay; `step` checks every 180 s, `target` reads demand every 5 s.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import pairwise

from dqagent.config import parse_settings
from dqagent.policies import Policy, StepPolicy, TargetPolicy
from dqagent.sim.model import PoolConfig, Result, oracle_worker_seconds, simulate
from dqagent.sim.reference import AwsBacklogPerInstance, CeleryAutoscale, KedaHpa
from dqagent.sim.traces import TRACES, Trace, Workload, generate

FLAP_WINDOW_S = 600.0


@dataclass(frozen=True, slots=True)
class Contender:
    """A policy as the benchmark runs it: how it is built, how often it decides, what it reads."""

    name: str
    build: Callable[[PoolConfig, Trace], Policy]
    tick_s: float
    metric: str = "outstanding"


def contenders() -> dict[str, Contender]:
    def step(p: PoolConfig, t: Trace) -> Policy:
        return StepPolicy(p.min_workers, p.max_workers, 5.0, 2.5)

    def target(p: PoolConfig, t: Trace) -> Policy:
        # Exactly what SCALING_POLICY=target builds from the default settings and the seed command.
        settings = parse_settings({"SCALING_POLICY": "target", "MIN_PROCESSES": str(p.min_workers),
                                   "MAX_PROCESSES": str(p.max_workers),
                                   "DRAMATIQ_COMMAND": f"python -m dramatiq --threads {p.threads} app"})
        return TargetPolicy.from_settings(settings)

    return {c.name: c for c in (
        Contender("step", step, 180.0),
        Contender("step-llen", step, 180.0, metric="ready"),
        Contender("target", target, 5.0),
        Contender("keda-hpa", lambda p, t: KedaHpa(p.min_workers, p.max_workers), 15.0, metric="ready"),
        Contender("keda-hpa-raw", lambda p, t: KedaHpa(p.min_workers, p.max_workers, behavior=False), 15.0,
                  metric="ready"),
        Contender("celery", lambda p, t: CeleryAutoscale(p.min_workers, p.max_workers, p.threads), 1.0),
        Contender("aws", lambda p, t: AwsBacklogPerInstance(p.min_workers, p.max_workers, p.threads,
                                                            t.service_mean_s), 60.0, metric="ready"),
    )}


@dataclass(frozen=True, slots=True)
class Metrics:
    policy: str
    trace: str
    p50_s: float
    p95_s: float
    p99_s: float
    max_backlog: int
    drain_s: float
    worker_seconds: float
    scale_events: int
    flaps: int


def percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def count_flaps(events: Sequence[tuple[float, int]], window_s: float = FLAP_WINDOW_S) -> int:
    """Direction reversals (up then down, or down then up) less than `window_s` apart."""
    return sum(1 for (t0, d0), (t1, d1) in pairwise(events)
               if d0 != d1 and t1 - t0 < window_s)


def metrics(result: Result, trace: str, policy: str) -> Metrics:
    w = result.waits_s
    return Metrics(policy, trace, percentile(w, 0.5), percentile(w, 0.95), percentile(w, 0.99),
                   result.max_backlog, max(result.burst_drain_s, default=math.nan), result.worker_seconds,
                   len(result.scale_events), count_flaps(result.scale_events))


def run(contender: Contender, workload: Workload, pool: PoolConfig) -> Result:
    p = PoolConfig(pool.threads, pool.prefetch, pool.startup_delay_s, pool.min_workers, pool.max_workers,
                   contender.metric)
    return simulate(workload, contender.build(p, workload.trace), p, contender.tick_s)


def format_row(m: Metrics) -> str:
    drain = "-" if math.isnan(m.drain_s) else f"{m.drain_s:.0f}"
    return (f"{m.trace:<11} {m.policy:<13} {m.p50_s:>8.1f} {m.p95_s:>8.1f} {m.p99_s:>8.1f} {m.max_backlog:>7} "
            f"{drain:>7} {m.worker_seconds:>9.0f} {m.scale_events:>6} {m.flaps:>5}")


HEADER = (f"{'trace':<11} {'policy':<13} {'p50 s':>8} {'p95 s':>8} {'p99 s':>8} {'backlog':>7} "
          f"{'drain s':>7} {'worker-s':>9} {'scales':>6} {'flaps':>5}")


def check_targets(table: dict[tuple[str, str], Metrics], oracle: dict[str, float]) -> list[tuple[str, bool]]:
    """The issue's targets, each with its measured figures."""
    out: list[tuple[str, bool]] = []
    for trace in ("burst", "ramp"):
        t, s = table[(trace, "target")], table[(trace, "step")]
        ratio = s.p95_s / t.p95_s if t.p95_s else math.inf
        out.append((f"{trace}: target p95 {t.p95_s:.1f}s vs step {s.p95_s:.1f}s = {ratio:.0f}x lower (>= 10x)",
                    ratio >= 10))
    for trace in TRACES:
        t, k = table[(trace, "target")], table[(trace, "keda-hpa")]
        out.append((f"{trace}: target p95 {t.p95_s:.1f}s <= keda-hpa {k.p95_s:.1f}s", t.p95_s <= k.p95_s))
        # One burst gives one up-then-down within 10 min to any policy that does not keep MAX workers
        # idle for 10 min afterwards: equal at 1 is reported as such.
        out.append((f"{trace}: target flaps {t.flaps} < keda-hpa {k.flaps}"
                    + (" (equal: one burst, one up-then-down)" if t.flaps == k.flaps == 1 else ""),
                    t.flaps < k.flaps or t.flaps == k.flaps <= 1))
        extra = t.worker_seconds / k.worker_seconds - 1
        out.append((f"{trace}: target worker-s {t.worker_seconds:.0f} vs keda-hpa {k.worker_seconds:.0f} "
                    f"({extra:+.0%}, <= +10%)", extra <= 0.10))
        over = t.worker_seconds / oracle[trace] - 1
        out.append((f"{trace}: target worker-s {t.worker_seconds:.0f} vs oracle {oracle[trace]:.0f} "
                    f"({over:+.0%}, <= +25%)", over <= 0.25))
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="dev/bench", description=__doc__.split("\n")[0] if __doc__ else "")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--traces", nargs="*", default=list(TRACES))
    args = parser.parse_args(argv)
    pool = PoolConfig()
    started = time.monotonic()
    table: dict[tuple[str, str], Metrics] = {}
    oracle: dict[str, float] = {}
    print(HEADER)
    for name in args.traces:
        workload = generate(TRACES[name], args.seed)
        for contender in contenders().values():
            m = metrics(run(contender, workload, pool), name, contender.name)
            table[(name, contender.name)] = m
            print(format_row(m), flush=True)
        oracle[name] = oracle_worker_seconds(workload, pool)
        print(f"{name:<11} {'oracle':<13} {'0.0':>8} {'0.0':>8} {'0.0':>8} {'-':>7} {'-':>7} "
              f"{oracle[name]:>9.0f} {'-':>6} {'-':>5}")
    if set(args.traces) == set(TRACES):
        print("\ntargets:")
        results = check_targets(table, oracle)
        for text, ok in results:
            print(f"  {'PASS' if ok else 'FAIL'}  {text}")
        print(f"\n{sum(ok for _, ok in results)}/{len(results)} targets met; "
              f"{time.monotonic() - started:.0f}s (seed {args.seed})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""PREDICTIVE in the simulator: periodic families, and the forecaster off and on over them and the drawn families
(`python -m dqagent.sim.periodic`, the table in docs/scaling.md).

Periodic families (drawn from stated ranges, the same (seed, k) always the same case):
- `bursts`: a batch of 0.5..2 x the threads at MAX every 60..900 s, nothing in between, for 2 hours or 30
  batches, whichever is longer;
- `bursts_noisy`: the same with the batch size +/- 30 % and its time +/- 5 % of the period;
- `daily`: a business-hours curve (quiet at night, a morning rise, a lunch dip) with +/- 20 % noise every
  5 minutes, for 4 days (the profile needs 3 to be trusted);
- `rhythm_change`: `bursts` whose period changes halfway (the forecaster must notice and follow, or step aside).

Each case runs `target` (reactive), `target` with PREDICTIVE=on (the same policy, the forecaster's floor on
top), and keda-hpa, on the same workload. The goals (issue text): on periodic families the forecaster's p95 wait
at most half of `target`'s, its flaps at most keda-hpa's, its worker-seconds at most `target`'s + 10 %; on the
drawn (non-periodic) families no worse than `target` by more than 2 % on p95, flaps and worker-seconds.
`--oracle` adds, on the periodic cases, the same floor fed a perfect forecast, MAX warm, a cost bound and whose
fault each miss is (`dqagent.sim.verdict`).
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from itertools import pairwise

from dqagent.core.prediction import Mode
from dqagent.sim.bench import metrics, percentile, unit_target_policy
from dqagent.sim.bound import cost_bound
from dqagent.sim.families import FAMILIES, draw_case
from dqagent.sim.model import PoolConfig, Result, simulate
from dqagent.sim.oracle import Oracle
from dqagent.sim.reference import KedaHpa
from dqagent.sim.robust import pool_for
from dqagent.sim.traces import Trace, generate
from dqagent.sim.verdict import Oracular, Row, verdicts_markdown

PERIODIC = ("bursts", "bursts_noisy", "daily", "rhythm_change")
#: Batches a bursts trace holds at least (the forecaster learns from the first three: the rest shows its use).
BURSTS = 30
DAY_S = 86400.0


@dataclass(frozen=True, slots=True)
class PeriodicCase:
    family: str
    pool: PoolConfig
    trace: Trace

    def learnt_s(self) -> float:
        """When the forecaster has had what it needs: four periods (three days for `daily`, and the second
        rhythm's four periods for `rhythm_change`)."""
        if self.family == "daily":
            return 3 * DAY_S
        times = [t for t, _ in self.trace.bursts]
        if self.family == "rhythm_change":
            half = self.trace.duration_s / 2
            times = [t for t in times if t >= half]
        return times[min(4, len(times) - 1)]

    def label(self) -> str:
        p = self.pool
        return (f"{self.family} {p.threads}t up {p.startup_delay_s:.0f}s {p.min_workers}..{p.max_workers} "
                f"svc {self.trace.service_mean_s:.1f}s {self.trace.description}")


def draw_periodic(seed: int, k: int) -> PeriodicCase:
    """The k-th periodic case of `seed` (deterministic)."""
    rng = random.Random(f"dqagent-periodic-{seed}-{k}")
    family = PERIODIC[k % len(PERIODIC)]
    threads = rng.choice((2, 4, 5, 8))
    pool = PoolConfig(threads=threads, prefetch=2 * threads, startup_delay_s=rng.uniform(3, 20),
                      min_workers=rng.choice((0, 1)), max_workers=rng.randint(4, 12), dispatch="poll")
    service = rng.uniform(1, 6)
    if family == "daily":
        return PeriodicCase(family, pool, _daily(rng, pool, service))
    period = rng.choice((60.0, 120.0, 300.0, 600.0, 900.0))
    size = max(1, round(rng.uniform(0.5, 2) * threads * pool.max_workers))
    if family == "rhythm_change":
        other = rng.choice([p for p in (60.0, 120.0, 300.0, 600.0) if p != period])
        half = max(3600.0, BURSTS / 2 * max(period, other))
        bursts = _bursts(rng, 0, half, period, size, 0.0) + _bursts(rng, half, 2 * half, other, size, 0.0)
        return PeriodicCase(family, pool, Trace(family, 2 * half, ((0, 0.0),), bursts=bursts,
                                                service_mean_s=service,
                                                description=f"{period:.0f}s then {other:.0f}s x {size}"))
    jitter = 0.3 if family == "bursts_noisy" else 0.0
    duration = max(7200.0, BURSTS * period)
    bursts = _bursts(rng, 0, duration, period, size, jitter)
    return PeriodicCase(family, pool, Trace(family, duration, ((0, 0.0),), bursts=bursts, service_mean_s=service,
                                            description=f"every {period:.0f}s x {size}"))


def _bursts(rng: random.Random, start: float, stop: float, period: float, size: int,
            jitter: float) -> tuple[tuple[float, int], ...]:
    out, t = [], start + period / 3
    while t < stop:
        at = t + (rng.uniform(-0.05, 0.05) * period if jitter else 0.0)
        out.append((max(start, at), max(1, round(size * rng.uniform(1 - jitter, 1 + jitter)))))
        t += period
    return tuple(out)


def _daily(rng: random.Random, pool: PoolConfig, service: float) -> Trace:
    """Four days of a business-hours curve at 20..60 % of MAX's capacity at its peak, noisy every 5 minutes."""
    peak = pool.max_workers * pool.threads / service * rng.uniform(0.2, 0.6)
    shape = ((0, 0.03), (7, 0.05), (9, 1.0), (12, 0.8), (13, 0.5), (14, 0.9), (17, 0.7), (19, 0.1), (24, 0.03))
    points: list[tuple[float, float]] = []
    for day in range(4):
        for step in range(288):
            hour = step / 12
            level = next(b + (e - b) * (hour - h0) / (h1 - h0)
                         for (h0, b), (h1, e) in pairwise(shape) if h0 <= hour <= h1)
            points.append((day * DAY_S + step * 300.0, peak * level * rng.uniform(0.8, 1.2)))
    return Trace("daily", 4 * DAY_S, tuple(points), service_mean_s=service, description=f"peak {peak:.2f}/s")


def run_three(label: str, periodic: bool, trace: Trace, pool: PoolConfig, seed: int, processes: int = 1,
              learnt_s: float = 0.0, oracle: bool = False) -> Row:
    """`target`, `target` with PREDICTIVE=on, and keda-hpa on one workload; the p95 waits of messages that
    arrived after `learnt_s` (the forecaster's learning time) for the goals, the whole run's beside them.
    `oracle`: also the runs and the bound of `Oracular`."""
    workload = generate(trace, seed)
    target = unit_target_policy(pool, processes, {})
    results = [simulate(workload, target, pool, 5.0, adaptive_reads=True, predictive=mode)
               for mode in (Mode.OFF, Mode.ON)]
    hpa_pool = replace(pool, metric="ready")
    hpa = simulate(workload, KedaHpa(pool.min_workers, pool.max_workers), hpa_pool, 15.0)
    late = [i for i, a in enumerate(workload.arrivals_s) if a >= learnt_s]
    t, p, k = (metrics(r, trace.name, name) for r, name in zip((*results, hpa), ("target", "predictive", "hpa"),
                                                                 strict=True))
    lt, lp, lk = (_learnt(r, late) for r in (*results, hpa))
    extra = None
    if oracle:
        best = simulate(workload, target, pool, 5.0, adaptive_reads=True, predictive=Mode.ON,
                        forecaster=Oracle(workload))
        warm = simulate(workload, target, replace(pool, min_workers=pool.max_workers), 5.0, adaptive_reads=True)
        extra = Oracular(metrics(best, trace.name, "oracle"), _learnt(best, late), _learnt(warm, late),
                         cost_bound(workload, pool, target.per_worker, k.flaps, results[0]))
    return Row(label, periodic, t, p, k, (lt, lp, lk), extra)


def _learnt(r: Result, late: Sequence[int]) -> float:
    return percentile([r.waits_s[i] for i in late if i < len(r.waits_s)], 0.95)


def rows(seeds: Sequence[int], k: int, drawn: int, oracle: bool = False) -> list[Row]:
    """The cases of `seeds`: `k` periodic and `drawn` drawn ones each (`oracle`: with `Oracular`, periodic only)."""
    out = []
    for seed in seeds:
        for i in range(k):
            case = draw_periodic(seed, i)
            out.append(run_three(case.label(), True, case.trace, case.pool, seed, learnt_s=case.learnt_s(),
                                 oracle=oracle))
        for i in range(drawn):
            c = draw_case(seed, i)
            out.append(run_three(c.label(), False, c.trace, pool_for(c, "poll"), seed, c.processes))
    return out


def markdown(found: Sequence[Row]) -> str:
    lines = ["| case | p95 wait, learnt: target / predictive / hpa (s) | whole run | flaps t / p / hpa | "
             "worker-s target / predictive | goals met |", "|---|---|---|---|---|---|"]
    for r in found:
        t, p, k = r.target, r.predictive, r.hpa
        met = r.met()
        marks = ", ".join(f"{name} {'yes' if ok else 'NO'}" for name, ok in met.items())
        learnt = " / ".join(f"{x:.1f}" for x in r.learnt_p95_s)
        lines.append(f"| {r.label} | {learnt} | {t.p95_s:.1f} / {p.p95_s:.1f} / {k.p95_s:.1f} | "
                     f"{t.flaps} / {p.flaps} / {k.flaps} | {t.worker_seconds:.0f} / {p.worker_seconds:.0f} "
                     f"({_ratio(p.worker_seconds, t.worker_seconds)}) | {marks} |")
    for periodic in (True, False):
        part = [r for r in found if r.periodic == periodic]
        if part:
            ok = sum(all(r.met().values()) for r in part)
            lines.append(f"\n{'Periodic' if periodic else 'Drawn (non-periodic)'} cases meeting every goal: "
                         f"{ok} of {len(part)}")
    return "\n".join(lines)


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b else "-"


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m dqagent.sim.periodic", description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[1])
    ap.add_argument("--periodic", type=int, default=len(PERIODIC) * 2, help="periodic cases per seed")
    ap.add_argument("--drawn", type=int, default=len(FAMILIES), help="drawn (non-periodic) cases per seed")
    ap.add_argument("--oracle", action="store_true",
                    help="also a perfect forecast, MAX warm and the cost bound on the periodic cases, and verdicts")
    args = ap.parse_args(argv)
    started = time.monotonic()
    found = rows(args.seeds, args.periodic, args.drawn, args.oracle)
    print(markdown(found))
    if args.oracle:
        print("\n" + verdicts_markdown(found))
    print(f"\n({time.monotonic() - started:.0f}s; seeds {', '.join(map(str, args.seeds))})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

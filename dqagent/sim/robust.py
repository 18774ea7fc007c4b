"""`dev/bench --random-pools K`: `target` on drawn pools and traces it was not tuned on, one verdict per target.

For each case (`dqagent.sim.families.draw_case`) it runs `target`, `step`, `keda-hpa` and `max-warm` on
the same workload and checks the issue's per-trace targets:

- p95: target's p95 wait <= keda-hpa's, or both <= 1 s;
- flaps: target's direction reversals (< 10 min apart) <= keda-hpa's;
- cost-keda: target's worker-seconds <= keda-hpa's;
- cost-oracle: target's worker-seconds <= 1.25 x the oracle's (the zero-wait cost: every message starts
  on arrival, workers start instantly, tasks packed perfectly; a queueing pool can cost less);
- vs-step: target's p95 at least 10 x lower than step's (met too when both are <= 1 s), unless
  capacity-bound: BOUND when `max-warm` (all MAX workers warm from the start, never stopped) waits more
  than that needs. `max-warm` is only a bound where no message can wait behind a long one in a
  busy worker's prefetch (no long jobs, service CV <= 1): with long jobs, warm workers hoard messages
  behind them and a policy can wait less, so there the verdict is FAIL, not BOUND.

Only PASS counts as met; the share is PASS / all.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace

from dqagent.core.policies import Policy, StepPolicy
from dqagent.sim.bench import ADAPTIVE_READS, BOUND, FAIL, PASS, Metrics, metrics, unit_target_policy
from dqagent.sim.families import Case, draw_case
from dqagent.sim.model import PoolConfig, oracle_worker_seconds, simulate
from dqagent.sim.reference import KedaHpa
from dqagent.sim.traces import generate

CHECKS = ("p95", "flaps", "cost-keda", "cost-oracle", "vs-step")


@dataclass(frozen=True, slots=True)
class CaseResult:
    case: Case
    rows: Mapping[str, Metrics]
    oracle_worker_s: float
    verdicts: tuple[tuple[str, str], ...]


def pool_for(case: Case, dispatch: str) -> PoolConfig:
    """A simulated worker is one unit: processes x threads slots, each process prefetching 2 x threads."""
    return PoolConfig(threads=case.slots, prefetch=case.processes * 2 * case.threads, startup_delay_s=case.startup_s,
                      min_workers=case.min_workers, max_workers=case.max_workers, dispatch=dispatch)


def verdicts(case: Case, rows: Mapping[str, Metrics], oracle_s: float) -> tuple[tuple[str, str], ...]:
    t, k, s, w = rows["target"], rows["keda-hpa"], rows["step"], rows["max-warm"]
    out = [("p95", PASS if t.p95_s <= k.p95_s or max(t.p95_s, k.p95_s) <= 1 else FAIL),
           ("flaps", PASS if t.flaps <= k.flaps else FAIL),
           ("cost-keda", PASS if t.worker_seconds <= k.worker_seconds else FAIL),
           ("cost-oracle", PASS if t.worker_seconds <= 1.25 * oracle_s else FAIL)]
    if s.p95_s >= 10 * t.p95_s or max(t.p95_s, s.p95_s) <= 1:
        vs_step = PASS
    elif w.p95_s > s.p95_s / 10 and case.trace.long_fraction == 0 and case.trace.service_cv <= 1:
        vs_step = BOUND
    else:
        vs_step = FAIL
    out.append(("vs-step", vs_step))
    return tuple(out)


def run_case(case: Case, seed: int, dispatch: str, target_settings: Mapping[str, str]) -> CaseResult:
    workload = generate(case.trace, seed)
    pool = pool_for(case, dispatch)
    builders: dict[str, tuple[Callable[[PoolConfig], Policy], float, str]] = {
        "target": (lambda p: unit_target_policy(p, case.processes, target_settings), 5.0, "outstanding"),
        "step": (lambda p: StepPolicy(p.min_workers, p.max_workers, 5.0, 2.5), 180.0, "outstanding"),
        "keda-hpa": (lambda p: KedaHpa(p.min_workers, p.max_workers), 15.0, "ready"),
        "max-warm": (lambda p: StepPolicy(p.max_workers, p.max_workers, 5.0, 2.5), 180.0, "outstanding"),
    }
    rows: dict[str, Metrics] = {}
    for name, (build, tick_s, metric) in builders.items():
        p = replace(pool, metric=metric, min_workers=pool.max_workers if name == "max-warm" else pool.min_workers)
        result = simulate(workload, build(p), p, tick_s, adaptive_reads=ADAPTIVE_READS and name == "target")
        rows[name] = metrics(result, case.family, name)
    oracle_s = oracle_worker_seconds(workload, pool)
    return CaseResult(case, rows, oracle_s, verdicts(case, rows, oracle_s))


def random_pools(k: int, seeds: Sequence[int], dispatch: str, target_settings: Mapping[str, str],
                 verbose: bool = True) -> float:
    """Run K cases per seed, print one line per case and the share of targets met; returns the share."""
    started = time.monotonic()
    met = total = 0
    counts = {c: [0, 0] for c in CHECKS}
    for seed in seeds:
        for i in range(k):
            case = draw_case(seed, i)
            r = run_case(case, seed, dispatch, target_settings)
            t, kd, s = r.rows["target"], r.rows["keda-hpa"], r.rows["step"]
            if verbose:
                marks = " ".join(f"{name}={v}" for name, v in r.verdicts)
                print(f"s{seed} #{i:<2} {case.label():<48} p95 {t.p95_s:7.1f}/{kd.p95_s:7.1f}/{s.p95_s:7.1f}s "
                      f"flaps {t.flaps:>2}/{kd.flaps:<2} w-s {t.worker_seconds:8.0f}/{kd.worker_seconds:8.0f}/"
                      f"{r.oracle_worker_s:8.0f}  {marks}", flush=True)
            for name, v in r.verdicts:
                counts[name][1] += 1
                if v == PASS:
                    counts[name][0] += 1
                    met += 1
                total += 1
    share = met / total if total else math.nan
    if verbose:
        per = ", ".join(f"{name} {m}/{n}" for name, (m, n) in counts.items())
        print("\n(columns: target/keda-hpa/step p95; target/keda-hpa flaps; target/keda-hpa/oracle worker-s)")
        seed_list = ", ".join(map(str, seeds))
        print(f"{met}/{total} targets met ({share:.0%}) over {k} random pools x seeds {seed_list}"
              f" ({dispatch} dispatch): {per}; {time.monotonic() - started:.0f}s")
    return share

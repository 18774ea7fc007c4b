"""Every policy on every trace, one table, and the issue's targets checked (run by `dev/bench`, dqagent.sim.benchcli).

Not a test: it prints figures. The seed defaults throughout: 5 threads per worker, 1..10 workers,
2 s mean service time, 5 s startup delay; `step` checks every 180 s, `target` reads demand every 5 s.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields, replace
from itertools import pairwise

from dqagent.core.policies import Policy, StepPolicy, TargetPolicy
from dqagent.settings.config import parse_settings
from dqagent.settings.workercmd import worker_shape
from dqagent.sim.model import PoolConfig, Result, oracle_worker_seconds, simulate
from dqagent.sim.reference import AwsBacklogPerInstance, CeleryAutoscale, KedaHpa
from dqagent.sim.traces import AGE_TRACES, TRACES, Trace, Workload, generate

FLAP_WINDOW_S = 600.0
#: `target` reads demand as the agent does: adaptively around DEMAND_POLL_INTERVAL (env DQBENCH_FIXED_READS=1
#: turns it off, to measure what it changes).
ADAPTIVE_READS = os.environ.get("DQBENCH_FIXED_READS") != "1"
#: Experiment switch (env DQBENCH_DOUBLING=1): `target` with TargetPolicy.doubling.
DOUBLING = os.environ.get("DQBENCH_DOUBLING") == "1"
#: Experiment switch (env DQBENCH_FLOOR_PREFETCH=1): the in-flight floor divides by the unit's prefetch.
FLOOR_PREFETCH = os.environ.get("DQBENCH_FLOOR_PREFETCH") == "1"
#: Experiment switch (env DQBENCH_NO_IDLE_SPARE=1): `target` with TargetPolicy.idle_spare off.
NO_IDLE_SPARE = os.environ.get("DQBENCH_NO_IDLE_SPARE") == "1"
#: Experiment switch (env DQBENCH_NO_BAND_ABOVE=1): `target` with TargetPolicy.band_above off.
NO_BAND_ABOVE = os.environ.get("DQBENCH_NO_BAND_ABOVE") == "1"
#: The seed defaults' pool, where the issue's targets are set; consumers fetch on Dramatiq's poll schedule,
#: the dispatch model the calibration against real workers chose (docs/scaling.md).
DEFAULT_POOL = PoolConfig(dispatch="poll")
#: Traces whose load is one batch: one up-then-down is the least any policy can do.
BURST_TRACES = ("burst", "idle_burst")


@dataclass(frozen=True, slots=True)
class Contender:
    """A policy as the benchmark runs it: how it is built, how often it decides, what it reads."""

    name: str
    build: Callable[[PoolConfig, Trace], Policy]
    tick_s: float
    metric: str = "outstanding"
    #: Start at MAX with every worker warm and never move: not a policy, the best wait any policy
    #: capped at MAX_PROCESSES can give, which bounds what the targets can ask of one.
    warm_max: bool = False
    #: Read demand at the agent's adaptive interval (`dqagent.core.policies.read_interval_s`) around `tick_s`.
    adaptive: bool = False


def target_policy(pool: PoolConfig, **settings: str) -> TargetPolicy:
    """Exactly what SCALING_POLICY=target builds from these settings (defaults otherwise) for `pool`."""
    return unit_target_policy(pool, 1, settings)


def unit_target_policy(pool: PoolConfig, processes: int, settings: Mapping[str, str]) -> TargetPolicy:
    """`target_policy` for a pool whose simulated worker is one unit of `processes` Dramatiq processes
    (`pool.threads` slots in all, `pool.threads // processes` threads each)."""
    threads = max(1, pool.threads // processes)
    env = {"SCALING_POLICY": "target", "MIN_PROCESSES": str(pool.min_workers),
           "MAX_PROCESSES": str(pool.max_workers),
           "DRAMATIQ_COMMAND": f"python -m dramatiq --processes {processes} --threads {threads} app", **settings}
    s = parse_settings(env)
    # The CPU count is not used with --processes given.
    policy = TargetPolicy.from_settings(s, worker_shape(s.dramatiq_command, cpu_count=1))
    if FLOOR_PREFETCH:
        policy = replace(policy, floor_per_unit=policy.per_worker)
    if NO_IDLE_SPARE:
        policy = replace(policy, idle_spare=False)
    if NO_BAND_ABOVE:
        policy = replace(policy, band_above=False)
    return replace(policy, doubling=True) if DOUBLING else policy


def contenders(target_settings: Mapping[str, str] | None = None) -> dict[str, Contender]:
    """Every policy the benchmark compares; `target_settings` overrides settings of `target` only."""
    overrides = dict(target_settings or {})

    def step(p: PoolConfig, t: Trace) -> Policy:
        return StepPolicy(p.min_workers, p.max_workers, 5.0, 2.5)

    def target(p: PoolConfig, t: Trace) -> Policy:
        return target_policy(p, **overrides)

    return {c.name: c for c in (
        Contender("step", step, 180.0),
        Contender("step-llen", step, 180.0, metric="ready"),
        Contender("target", target, 5.0, adaptive=ADAPTIVE_READS),
        Contender("keda-hpa", lambda p, t: KedaHpa(p.min_workers, p.max_workers), 15.0, metric="ready"),
        Contender("keda-hpa-raw", lambda p, t: KedaHpa(p.min_workers, p.max_workers, behavior=False), 15.0,
                  metric="ready"),
        Contender("celery", lambda p, t: CeleryAutoscale(p.min_workers, p.max_workers, p.threads), 1.0),
        Contender("aws", lambda p, t: AwsBacklogPerInstance(p.min_workers, p.max_workers, p.threads,
                                                            t.service_mean_s), 60.0, metric="ready"),
        Contender("max-warm", step, 180.0, warm_max=True),
    )}


#: The MAX_QUEUE_AGE rows: the limit they use, and a cost-minded TARGET_PER_WORKER (5 x the
#: default prefetch of 10) with which the count rule lets a short list wait for minutes.
AGE_LIMIT = "30"
COST_MINDED = {"TARGET_PER_WORKER": "50"}


def age_contenders() -> dict[str, Contender]:
    """`target` with and without MAX_QUEUE_AGE, at the defaults and cost-minded; step and keda-hpa to compare.

    Built from the `target` contender (its read interval and all), only the settings differ.
    """
    base = contenders()

    def variant(name: str, **settings: str) -> Contender:
        return replace(base["target"], name=name, build=lambda p, t: target_policy(p, **settings))

    return {c.name: c for c in (
        base["step"], base["target"], variant(f"target+age{AGE_LIMIT}", MAX_QUEUE_AGE=AGE_LIMIT),
        variant("tpw50", **COST_MINDED), variant(f"tpw50+age{AGE_LIMIT}", **COST_MINDED, MAX_QUEUE_AGE=AGE_LIMIT),
        base["keda-hpa"],
    )}


def age_rows(seed: int, pool: PoolConfig) -> None:
    """The MAX_QUEUE_AGE table: every `age_contenders()` row on `AGE_TRACES`, then `target` with and
    without the limit on `TRACES` (the same figures there: the count rule keeps the list short)."""
    print(f"\nMAX_QUEUE_AGE={AGE_LIMIT} rows (tpw50: TARGET_PER_WORKER={COST_MINDED['TARGET_PER_WORKER']}):")
    print(HEADER)
    roster = age_contenders()
    for name, trace in AGE_TRACES.items():
        workload = generate(trace, seed)
        for contender in roster.values():
            print(format_row(metrics(run(contender, workload, pool), name, contender.name)), flush=True)
        print(f"{name:<11} {'oracle':<13} {'0.0':>8} {'0.0':>8} {'0.0':>8} {'-':>7} {'-':>7} "
              f"{oracle_worker_seconds(workload, pool):>9.0f} {'-':>6} {'-':>5}")
    changed = []
    for name, trace in TRACES.items():
        workload = generate(trace, seed)
        off, on = (metrics(run(roster[c], workload, pool), name, c) for c in ("target", f"target+age{AGE_LIMIT}"))
        if (off.p95_s, off.worker_seconds) != (on.p95_s, on.worker_seconds):
            changed.append(f"{name}: p95 {off.p95_s:.1f} -> {on.p95_s:.1f}s, "
                           f"worker-s {off.worker_seconds:.0f} -> {on.worker_seconds:.0f}")
    print(f"target with MAX_QUEUE_AGE={AGE_LIMIT} on {', '.join(TRACES)}: "
          + ("; ".join(changed) if changed else "the same p95 and worker-s as without"))


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
    lo = pool.max_workers if contender.warm_max else pool.min_workers
    p = replace(pool, min_workers=lo, metric=contender.metric)
    return simulate(workload, contender.build(p, workload.trace), p, contender.tick_s,
                    adaptive_reads=contender.adaptive)


def format_row(m: Metrics) -> str:
    drain = "-" if math.isnan(m.drain_s) else f"{m.drain_s:.0f}"
    return (f"{m.trace:<11} {m.policy:<13} {m.p50_s:>8.1f} {m.p95_s:>8.1f} {m.p99_s:>8.1f} {m.max_backlog:>7} "
            f"{drain:>7} {m.worker_seconds:>9.0f} {m.scale_events:>6} {m.flaps:>5}")


#: What the two rows that are not policies are.
LEGEND = ("max-warm: not a policy, all MAX_PROCESSES workers warm from the start and never stopped (a bound on "
          "wait only without long or heavy-tailed jobs); oracle: not a policy, the zero-wait cost (every message "
          "starts on arrival, instant workers, perfect packing)")

HEADER = (f"{'trace':<11} {'policy':<13} {'p50 s':>8} {'p95 s':>8} {'p99 s':>8} {'backlog':>7} "
          f"{'drain s':>7} {'worker-s':>9} {'scales':>6} {'flaps':>5}")


#: How a target came out. BOUND: not met, and no policy capped at MAX_PROCESSES could meet it (the
#: max-warm row shows the best wait possible). TIE: equal, where one is the least any policy can do.
PASS, TIE, BOUND, FAIL = "PASS", "TIE", "BOUND", "FAIL"


@dataclass(frozen=True, slots=True)
class TraceChecks:
    """The issue's four per-trace comparisons of `target` against keda-hpa and the oracle."""

    p95: bool
    flaps: bool
    cost_keda: bool
    cost_oracle: bool


def trace_checks(t: Metrics, keda: Metrics, oracle_worker_s: float) -> TraceChecks:
    return TraceChecks(p95=t.p95_s <= keda.p95_s, flaps=t.flaps < keda.flaps,
                       cost_keda=t.worker_seconds <= 1.10 * keda.worker_seconds,
                       cost_oracle=t.worker_seconds <= 1.25 * oracle_worker_s)


def check_targets(table: dict[tuple[str, str], Metrics], oracle: dict[str, float],
                  warm_bounds_wait: bool = True) -> list[tuple[str, str]]:
    """The issue's targets, each with its verdict and its measured figures.

    `warm_bounds_wait`: whether `max-warm` (all MAX workers warm, never stopped) bounds the wait any
    policy can reach. Not with heavy-tailed or long jobs: warm workers then hoard messages in their
    prefetch behind long tasks, and a policy that stops workers can wait less; pass False there, and a
    missed 10x is FAIL, never BOUND.
    """
    out: list[tuple[str, str]] = []
    for trace in ("burst", "ramp"):
        t, s, w = table[(trace, "target")], table[(trace, "step")], table[(trace, "max-warm")]
        ratio = s.p95_s / t.p95_s if t.p95_s else math.inf
        text = f"{trace}: target p95 {t.p95_s:.1f}s vs step {s.p95_s:.1f}s = {ratio:.1f}x lower (>= 10x)"
        if ratio >= 10:
            out.append((text, PASS))
        elif warm_bounds_wait and w.p95_s > s.p95_s / 10:
            out.append((f"{text}; needs <= {s.p95_s / 10:.1f}s but MAX warm workers from the start give "
                        f"{w.p95_s:.1f}s", BOUND))
        else:
            out.append((text, FAIL))
    for trace in TRACES:
        t, k = table[(trace, "target")], table[(trace, "keda-hpa")]
        met = trace_checks(t, k, oracle[trace])
        out.append((f"{trace}: target p95 {t.p95_s:.1f}s <= keda-hpa {k.p95_s:.1f}s", PASS if met.p95 else FAIL))
        text = f"{trace}: target flaps {t.flaps} < keda-hpa {k.flaps}"
        if met.flaps:
            out.append((text, PASS))
        elif t.flaps == k.flaps == 1 and trace in BURST_TRACES:
            # One burst: scaling up and releasing the workers within 10 min is one reversal; only keeping
            # MAX workers idle for 10 min after it avoids it.
            out.append((f"{text}: one burst, one up-then-down", TIE))
        else:
            out.append((text, FAIL))
        extra = t.worker_seconds / k.worker_seconds - 1
        out.append((f"{trace}: target worker-s {t.worker_seconds:.0f} vs keda-hpa {k.worker_seconds:.0f} "
                    f"({extra:+.0%}, <= +10%)", PASS if met.cost_keda else FAIL))
        over = t.worker_seconds / oracle[trace] - 1
        out.append((f"{trace}: target worker-s {t.worker_seconds:.0f} vs oracle {oracle[trace]:.0f} "
                    f"({over:+.0%}, <= +25%)", PASS if met.cost_oracle else FAIL))
    return out


#: The grid `--sweep` walks: the two settings that trade wait and flaps against cost.
SWEEP_PER_WORKER = ("auto", "12.5", "15", "20")
SWEEP_WINDOW = ("30", "60", "120", "180", "300")


def sweep(trace: str, seed: int) -> None:
    """`target` over a grid of TARGET_PER_WORKER x SCALE_DOWN_WINDOW on one trace, against keda-hpa and
    the oracle: shows whether any setting meets the four per-trace targets at once, and what each costs."""
    pool = DEFAULT_POOL
    workload = generate(TRACES[trace], seed)
    k = metrics(run(contenders()["keda-hpa"], workload, pool), trace, "keda-hpa")
    oracle = oracle_worker_seconds(workload, pool)
    print(f"{trace} (seed {seed}): keda-hpa p95 {k.p95_s:.1f}s, {k.flaps} flaps, {k.worker_seconds:.0f} worker-s; "
          f"oracle {oracle:.0f} worker-s")
    print(f"{'TARGET_PER_WORKER':>17} {'SCALE_DOWN_WINDOW':>17} {'p95 s':>7} {'flaps':>5} {'worker-s':>8} "
          f"{'vs keda':>7} {'vs oracle':>9}  targets met")
    for per_worker in SWEEP_PER_WORKER:
        for window in SWEEP_WINDOW:
            policy = target_policy(pool, TARGET_PER_WORKER=per_worker, SCALE_DOWN_WINDOW=window)
            m = metrics(simulate(workload, policy, pool, 5.0, adaptive_reads=ADAPTIVE_READS), trace, "target")
            checks = trace_checks(m, k, oracle)
            met = [f.name.replace("_", "-") for f in fields(checks) if getattr(checks, f.name)]
            print(f"{per_worker:>17} {window:>17} {m.p95_s:>7.1f} {m.flaps:>5} {m.worker_seconds:>8.0f} "
                  f"{m.worker_seconds / k.worker_seconds - 1:>+7.0%} {m.worker_seconds / oracle - 1:>+9.0%}  "
                  f"{len(met)}/4 {' '.join(met)}")


def variant(trace: Trace, service_mean_s: float | None, service_cv: float | None) -> Trace:
    """`trace` with another service time; arrival rates scale inversely, so the offered load is the same."""
    if service_mean_s is not None:
        factor = trace.service_mean_s / service_mean_s
        trace = replace(trace, service_mean_s=service_mean_s,
                        rate_points=tuple((t, r * factor) for t, r in trace.rate_points))
    return trace if service_cv is None else replace(trace, service_cv=service_cv)

"""`dev/bench`: the scaling benchmark's command line (not a test; it prints tables).

The default run prints every policy on every trace (dqagent.sim.bench) with the targets checked, then the
MAX_QUEUE_AGE rows, the guard on an over-committed host (dqagent.sim.host) and fleet mode against
independent agents (dqagent.sim.fleet); options print one part alone or a held-out variant.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from dataclasses import replace

from dqagent.errors import ConfigError
from dqagent.sim.bench import (
    AGE_LIMIT,
    BOUND,
    DEFAULT_POOL,
    FAIL,
    HEADER,
    LEGEND,
    PASS,
    TIE,
    Metrics,
    age_rows,
    check_targets,
    contenders,
    format_row,
    metrics,
    percentile,
    run,
    sweep,
    target_policy,
    variant,
)
from dqagent.sim.fleet import summary
from dqagent.sim.host import BENCH_GUARD, BENCH_HOST, HostModel
from dqagent.sim.model import DISPATCH_MODELS, POLL_EXACT, PoolConfig, oracle_worker_seconds, simulate
from dqagent.sim.robust import random_pools
from dqagent.sim.traces import TRACES, generate


def host_rows(seed: int = 1, hosts: Sequence[HostModel] = (BENCH_HOST, replace(BENCH_HOST, contention=0))) -> list[str]:
    """One line per host model: the burst trace's drain time and p95 wait, without and with the guard."""
    trace = TRACES["burst"]
    workload = generate(trace, seed)
    pool = replace(DEFAULT_POOL, dispatch="first")  # as measured for docs/operations.md's guard figures
    lines = []
    for host in hosts:
        figures = []
        for guard in (None, BENCH_GUARD):
            result = simulate(workload, target_policy(pool), pool, 5.0, host=host, guard=guard)
            figures.append((result.burst_drain_s[0], percentile(result.waits_s, 0.95), result.worker_seconds))
        (off_drain, off_p95, off_cost), (on_drain, on_p95, on_cost) = figures
        lines.append(f"burst on a host of {host.capacity:g} workers (contention {host.contention:g}), target policy "
                     f"1..{DEFAULT_POOL.max_workers}: drain {off_drain:.0f}s without the guard, {on_drain:.0f}s with "
                     f"it (p95 wait {off_p95:.0f}s / {on_p95:.0f}s, worker-s {off_cost:.0f} / {on_cost:.0f})")
    return lines


def _setting(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dev/bench", description=__doc__.split("\n")[0] if __doc__ else "")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--traces", nargs="*", default=list(TRACES), choices=list(TRACES), metavar="TRACE")
    parser.add_argument("--sweep", choices=list(TRACES), metavar="TRACE",
                        help="instead of the table: target over a grid of its settings on one trace")
    parser.add_argument("--age", action="store_true", help=f"only the MAX_QUEUE_AGE={AGE_LIMIT} rows")
    parser.add_argument("--fleet", action="store_true", help="only the fleet-mode rows (python -m dqagent.sim.fleet)")
    parser.add_argument("--host", action="store_true", help="only the guard's rows on an over-committed host")
    held_out = parser.add_argument_group("held-out variants (not the seed defaults the targets are set at)")
    held_out.add_argument("--set", type=_setting, action="append", default=[], metavar="KEY=VALUE",
                          help="a setting of the target policy, e.g. TARGET_PER_WORKER=12.5")
    held_out.add_argument("--threads", type=int, default=DEFAULT_POOL.threads, help="threads per worker")
    held_out.add_argument("--max-workers", type=int, default=DEFAULT_POOL.max_workers)
    held_out.add_argument("--service-mean", type=float, default=None, metavar="S",
                          help="mean service time; arrival rates scale so the offered load is the same")
    held_out.add_argument("--service-cv", type=float, default=None, metavar="CV")
    held_out.add_argument("--dispatch", choices=(*DISPATCH_MODELS, POLL_EXACT), default=DEFAULT_POOL.dispatch,
                          help="which worker with prefetch room takes an arrival (a modelling assumption; "
                               f"default {DEFAULT_POOL.dispatch}, as calibrated; {POLL_EXACT}: poll, every poll "
                               "simulated, the slow reference)")
    held_out.add_argument("--random-pools", type=int, default=0, metavar="K",
                          help="instead of the table: K drawn pools and traces per seed (dqagent/sim/families.py)")
    held_out.add_argument("--seeds", type=int, nargs="*", default=None, metavar="SEED",
                          help="with --random-pools: the seeds (default: --seed)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.random_pools:
        overrides = dict(args.set)
        try:
            target_policy(DEFAULT_POOL, **overrides)
        except ConfigError as exc:
            parser.error(f"--set: {exc}")
        random_pools(args.random_pools, args.seeds or [args.seed], args.dispatch, overrides)
        return 0
    if args.sweep:
        sweep(args.sweep, args.seed)
        return 0
    if args.age:
        age_rows(args.seed, replace(DEFAULT_POOL, dispatch=args.dispatch))
        return 0
    if args.fleet:
        return summary(5, 6.0, args.seed)
    if args.host:
        print("\n".join(host_rows(args.seed)))
        return 0
    pool = PoolConfig(threads=args.threads, prefetch=2 * args.threads, max_workers=args.max_workers,
                      dispatch=args.dispatch)
    overrides = dict(args.set)
    try:
        target_policy(pool, **overrides)
    except ConfigError as exc:
        parser.error(f"--set: {exc}")
    seed_table(args, pool, overrides)
    return 0


def seed_table(args: argparse.Namespace, pool: PoolConfig, overrides: dict[str, str]) -> None:
    """Every policy on every trace, the targets checked; with every trace also the age, guard and fleet rows."""
    roster = contenders(overrides)
    started = time.monotonic()
    table: dict[tuple[str, str], Metrics] = {}
    oracle: dict[str, float] = {}
    print(HEADER)
    for name in args.traces:
        workload = generate(variant(TRACES[name], args.service_mean, args.service_cv), args.seed)
        for contender in roster.values():
            m = metrics(run(contender, workload, pool), name, contender.name)
            table[(name, contender.name)] = m
            print(format_row(m), flush=True)
        oracle[name] = oracle_worker_seconds(workload, pool)
        print(f"{name:<11} {'oracle':<13} {'0.0':>8} {'0.0':>8} {'0.0':>8} {'-':>7} {'-':>7} "
              f"{oracle[name]:>9.0f} {'-':>6} {'-':>5}")
    print(LEGEND)
    if set(args.traces) == set(TRACES):
        print("\ntargets:")
        results = check_targets(table, oracle, warm_bounds_wait=args.service_cv is None or args.service_cv <= 1)
        for text, verdict in results:
            print(f"  {verdict:<5}  {text}")
        counts = {v: sum(1 for _, got in results if got == v) for v in (PASS, TIE, BOUND, FAIL)}
        print(f"\n{counts[PASS]}/{len(results)} targets met ({counts[TIE]} tie, {counts[BOUND]} beyond MAX, "
              f"{counts[FAIL]} failed); {time.monotonic() - started:.0f}s (seed {args.seed})")
        age_rows(args.seed, pool)
        print("\nthe guard (docs/operations.md): a burst on an over-committed host")
        print("\n".join(host_rows(args.seed)))
        print("\nfleet mode (docs/fleet.md): several hosts on one queue, FLEET set vs independent agents")
        summary(3, 2.0, args.seed)


if __name__ == "__main__":
    sys.exit(main())

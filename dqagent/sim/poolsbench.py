"""Two pools bursting on a host with HOST_MAX_PROCESSES=5: the table docs/scaling.md ("Pools") shows (`./dev/pools`).

Not a test: it prints figures (tests/unit/test_sim_pools.py asserts the behaviour). Both pools are the seed's
workers (5 threads, 2 s mean tasks, 5 s start-up, Dramatiq's poll dispatch) under SCALING_POLICY=target, each
in [1, 5] on its own queue:

- `urgent` (POOL_PRIORITY=10): 0.2 messages/s, and a burst of 8/s from 600 s to 900 s (four workers' worth);
- `batch` (POOL_PRIORITY=0): 6 messages/s until 1500 s (three to four workers' worth), then 0.2/s.

Together they want up to 9 workers on a host that allows 5. The same pools are also run with no host budget
(10 at most) and with equal priorities, to show what the budget and the priority change.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import replace

from dqagent.sim.bench import DEFAULT_POOL, percentile, target_policy
from dqagent.sim.hostpools import HostResult, PoolSpec, simulate_host
from dqagent.sim.traces import Trace, generate

BUDGET = 5
#: The urgent pool's burst.
BURST_S = (600.0, 900.0)
DURATION_S = 1800.0
POOL = replace(DEFAULT_POOL, min_workers=1, max_workers=5)

URGENT = Trace("urgent", DURATION_S, ((0.0, 0.2), (BURST_S[0], 0.2), (BURST_S[0] + 1, 8.0), (BURST_S[1], 8.0),
                                      (BURST_S[1] + 1, 0.2)), description="0.2/s, 8/s from 600 s to 900 s")
BATCH = Trace("batch", DURATION_S, ((0.0, 6.0), (1500.0, 6.0), (1501.0, 0.2)),
              description="6/s until 1500 s, then 0.2/s")


def pools(seed: int = 1, urgent_priority: int = 10, batch_priority: int = 0) -> list[PoolSpec]:
    """The scenario's two pools."""
    return [PoolSpec("urgent", generate(URGENT, seed), target_policy(POOL), POOL, urgent_priority),
            PoolSpec("batch", generate(BATCH, seed + 1), target_policy(POOL), POOL, batch_priority)]


def scenario(seed: int = 1, budget: int | None = BUDGET, urgent_priority: int = 10) -> HostResult:
    return simulate_host(pools(seed, urgent_priority), budget)


HEADER = (f"{'HOST_MAX_PROCESSES':<18} {'priorities':<12} {'pool':<7} {'p95 wait s':>10} {'burst p95 s':>11} "
          f"{'worker-s':>9} {'max units':>9} {'host max':>8}")


def rows(seed: int = 1) -> list[str]:
    """The table: the budget of 5 with priorities 10/0, the same budget with equal priorities, no budget."""
    out = []
    for budget, urgent_priority in ((BUDGET, 10), (BUDGET, 0), (None, 10)):
        result = scenario(seed, budget, urgent_priority)
        for name, r in result.pools.items():
            arrivals = {p.name: p.workload.arrivals_s for p in pools(seed)}[name]
            burst = [w for w, t in zip(r.waits_s, arrivals, strict=False) if BURST_S[0] <= t < BURST_S[1]]
            out.append(f"{budget if budget is not None else 'none':<18} "
                       f"{f'{urgent_priority}/0':<12} {name:<7} {percentile(r.waits_s, 0.95):>10.1f} "
                       f"{percentile(burst, 0.95):>11.1f} {r.worker_seconds:>9.0f} {result.max_units(name):>9} "
                       f"{result.max_units():>8}")
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="dev/pools", description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    print(f"urgent: {URGENT.description}; batch: {BATCH.description}; both [1, 5], target, seed {args.seed}")
    print(HEADER)
    for row in rows(args.seed):
        print(row)
    print("p95 wait: all of the pool's messages; burst p95: those that arrived during urgent's burst "
          f"({BURST_S[0]:.0f}-{BURST_S[1]:.0f} s); max units: running, starting and still stopping at once")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

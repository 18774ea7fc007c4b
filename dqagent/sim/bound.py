"""What any policy must pay on a batch workload to keep keda-hpa's flap count (`python -m dqagent.sim.periodic
--oracle`), and the per-case verdict: the goals' fault or the forecaster's.

The cost bound (docs/scaling.md, "Prediction"), for batches i = 1..n arriving at t_i:

- Assume a policy that meets the p95 goal has each batch's workers W_i running when it arrives (what the
  pre-warm aims at): W_i = ceil(batch / TARGET_PER_WORKER) within [MIN, MAX], what `target` asks for on reading
  it and what the pre-warm starts (halving `target`'s wait, which scales up only after the batch is read,
  needs them there).
- A gap i = (t_i, t_{i+1}] in which the pool falls below m_i = min(W_i, W_{i+1}) holds a stop followed by a
  start, so two consecutive scale events of opposite direction less than t_{i+1} - t_i apart: a flap whenever
  the gap is at most FLAP_WINDOW_S (600 s). Distinct gaps are disjoint, so they are distinct flaps. A policy
  with at most F flaps therefore holds at least G - F of the G such gaps at m_i workers or more all through.
- Cost: the zero-wait pool (`oracle_worker_seconds`: every message starts on arrival, tasks packed perfectly,
  workers start instantly, never below MIN) costs c_i over gap i. A held gap costs at least max(c_i, m_i x T_i);
  one scaled through costs at least c_i + the start-up (PROCESS_STARTUP_DELAY, charged, serving nothing) of the
  W_{i+1} - m_i + 1 workers it starts to be back at W_{i+1}. So any such policy costs at least sum c_i + the
  least sum over the short gaps of those two extras with at least G - F of them held (`CostBound.lower_s`).
- `CostBound.estimate_s`, not a bound: `target`'s own run with its G - F cheapest short gaps raised to m_i
  workers (what holding would add to what `target` pays, if the batches cost what they cost it).

Approximate in two places, both stated where the numbers are: c_i is a lower bound only for pools that start
every message on arrival (one that lets 5 % of them wait may pack them a little tighter), and W_i is an
assumption about what the p95 goal needs, not a proof. It is conservative in others: a gap scaled through usually
costs two flaps (the start for the batch and the stop after it), counted as one; gaps over 600 s, the first
batch and the idle tails are counted at the zero-wait pool's cost.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise

from dqagent.sim.bench import FLAP_WINDOW_S
from dqagent.sim.model import PoolConfig, Result
from dqagent.sim.pool import Life
from dqagent.sim.traces import Workload


@dataclass(frozen=True, slots=True)
class CostBound:
    """What a policy with at most `flaps` flaps that has each batch's workers up costs at least (`lower_s`), and
    what `target`'s own run would cost holding the gaps it must hold (`estimate_s`)."""

    flaps: int
    #: Gaps between batches at most FLAP_WINDOW_S long, and how many of them must be held.
    short_gaps: int
    held: int
    #: The zero-wait pool's cost (no gap held, no start-up).
    zero_wait_s: float
    #: The bound: the zero-wait pool, a start-up per gap scaled through, the gaps held at m_i.
    lower_s: float
    #: `target`'s run with its `held` cheapest short gaps raised to m_i workers (approximate, not a bound).
    estimate_s: float


def zero_wait_steps(workload: Workload, pool: PoolConfig) -> list[tuple[float, int]]:
    """The zero-wait pool's workers as (from time, workers) steps: max(MIN, ceil(busy threads / threads))."""
    points = sorted([(a, 1) for a in workload.arrivals_s]
                    + [(a + s, -1) for a, s in zip(workload.arrivals_s, workload.services_s, strict=True)])
    steps, busy = [(0.0, pool.min_workers)], 0
    for t, delta in points:
        busy += delta
        steps.append((t, max(pool.min_workers, math.ceil(busy / pool.threads))))
    return steps


def integrate(steps: Sequence[tuple[float, int]], edges: Sequence[float]) -> list[float]:
    """Worker-seconds of the step function `steps` over each interval [edges[k], edges[k + 1])."""
    out, k, n = [], 0, len(steps)
    for lo, hi in pairwise(edges):
        while k + 1 < n and steps[k + 1][0] <= lo:
            k += 1
        total, j, t = 0.0, k, lo
        while t < hi:
            stop = min(hi, steps[j + 1][0]) if j + 1 < n else hi
            total += (stop - t) * steps[j][1]
            t, j = stop, j + 1
        out.append(total)
    return out


def batch_workers(count: int, per_worker: float, pool: PoolConfig) -> int:
    """W_i: the workers `target` asks for on reading a batch of `count` (and the pre-warm starts)."""
    return max(pool.min_workers, min(pool.max_workers, math.ceil(count / per_worker - 1e-9)))


def lives_between(lives: Sequence[Life], edges: Sequence[float]) -> list[float]:
    """Worker-seconds a run's workers (`Result.lives`, charged from start to end) spent in each interval
    [edges[k], edges[k + 1])."""
    out = [0.0] * (len(edges) - 1)
    for life in lives:
        end = life.ended_s if not math.isnan(life.ended_s) else edges[-1]
        first = max(0, bisect.bisect_right(edges, life.started_s) - 1)
        for k in range(first, len(out)):
            lo, hi = edges[k], edges[k + 1]
            if lo >= end:
                break
            out[k] += max(0.0, min(hi, end) - max(lo, life.started_s))
    return out


def cost_bound(workload: Workload, pool: PoolConfig, per_worker: float, flaps: int,
               target: Result) -> CostBound | None:
    """The bound of the module docstring for a policy allowed `flaps` flaps, and the estimate from `target`'s run
    (None: not a batch workload)."""
    bursts = sorted(workload.trace.bursts)
    if len(bursts) < 2:
        return None
    times = [t for t, _ in bursts]
    end = max(workload.trace.duration_s, target.end_s,
              max(a + s for a, s in zip(workload.arrivals_s, workload.services_s, strict=True)))
    edges = [0.0, *times, end]
    costs = integrate(zero_wait_steps(workload, pool), edges)
    spent = lives_between(target.lives, edges)
    held, scaled, over_target = [], [], []
    for i, ((t0, n0), (t1, n1)) in enumerate(pairwise(bursts)):
        if t1 - t0 <= FLAP_WINDOW_S:
            w0, w1 = batch_workers(n0, per_worker, pool), batch_workers(n1, per_worker, pool)
            held.append(max(0.0, min(w0, w1) * (t1 - t0) - costs[i + 1]))
            scaled.append((w1 - min(w0, w1) + 1) * pool.startup_delay_s)
            over_target.append(max(0.0, min(w0, w1) * (t1 - t0) - spent[i + 1]))
    must = max(0, len(held) - flaps)
    # Each short gap costs the least of held and scaled through, and at least `must` of them are held: those
    # where holding costs least over scaling through.
    by_extra = sorted(h - s for h, s in zip(held, scaled, strict=True))
    lower = sum(costs) + sum(scaled) + sum(x for k, x in enumerate(by_extra) if k < must or x < 0)
    return CostBound(flaps, len(held), must, sum(costs), lower,
                     target.worker_seconds + sum(sorted(over_target)[:must]))

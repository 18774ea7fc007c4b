"""Workload traces: an arrival-rate shape plus bursts, turned into concrete messages with a seed.

A `Trace` is the shape (small, readable, also loadable from a JSON file); `generate()` draws a
`Workload` from it: Poisson arrival times (non-homogeneous, by thinning a piecewise-linear rate)
and lognormal service times. Every policy in a comparison replays the same `Workload`, so the
differences in the table come from the policies, not from the dice.
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass, fields, replace
from itertools import pairwise
from pathlib import Path
from typing import Any


@dataclass(frozen=True, slots=True)
class Trace:
    """The shape of a workload. Rates are messages per second, times seconds from the start."""

    name: str
    duration_s: float
    #: Piecewise-linear arrival rate: (time_s, rate_per_s) points, times ascending.
    rate_points: tuple[tuple[float, float], ...]
    #: (time_s, count): messages enqueued at the same instant (a producer's batch).
    bursts: tuple[tuple[float, int], ...] = ()
    service_mean_s: float = 2.0
    #: Coefficient of variation (std / mean) of the lognormal service time.
    service_cv: float = 1.0
    #: Share of messages that are long jobs, and their mean service time (same CV).
    long_fraction: float = 0.0
    long_mean_s: float = 300.0
    description: str = ""

    def rate_at(self, t_s: float) -> float:
        """Arrival rate at `t_s`, linear between points, flat outside them."""
        pts = self.rate_points
        if t_s <= pts[0][0]:
            return pts[0][1]
        for (t0, r0), (t1, r1) in pairwise(pts):
            if t_s <= t1:
                return r0 if t1 == t0 else r0 + (r1 - r0) * (t_s - t0) / (t1 - t0)
        return pts[-1][1]


@dataclass(frozen=True, slots=True)
class Workload:
    """Concrete messages, sorted by arrival. Index i is message i everywhere."""

    trace: Trace
    seed: int
    arrivals_s: tuple[float, ...]
    services_s: tuple[float, ...]
    #: For each burst in `trace.bursts`, the indices of its messages.
    burst_members: tuple[tuple[int, ...], ...]

    def __len__(self) -> int:
        return len(self.arrivals_s)


def _lognormal(rng: random.Random, mean_s: float, cv: float) -> float:
    sigma2 = math.log(1 + cv * cv)
    return rng.lognormvariate(math.log(mean_s) - sigma2 / 2, math.sqrt(sigma2))


def _poisson_times(trace: Trace, rng: random.Random) -> list[float]:
    """Arrival times on [0, duration) by thinning, segment by segment (cheap when rates vary a lot)."""
    edges = sorted({0.0, trace.duration_s, *(t for t, _ in trace.rate_points if 0 < t < trace.duration_s)})
    times: list[float] = []
    for a, b in pairwise(edges):
        peak = max(trace.rate_at(a), trace.rate_at(b))
        if peak <= 0:
            continue
        t = a
        while True:
            t += rng.expovariate(peak)
            if t >= b:
                break
            if rng.random() * peak < trace.rate_at(t):
                times.append(t)
    return times


def generate(trace: Trace, seed: int) -> Workload:
    """Draw the messages of `trace`; the same seed gives the same workload, bit for bit."""
    rng = random.Random(seed)
    tagged: list[tuple[float, int]] = [(t, -1) for t in _poisson_times(trace, rng)]
    for b, (at_s, count) in enumerate(trace.bursts):
        tagged.extend((at_s, b) for _ in range(count))
    tagged.sort(key=lambda x: x[0])  # stable: a burst keeps its order, after earlier arrivals
    services: list[float] = []
    for _ in tagged:
        long_job = trace.long_fraction > 0 and rng.random() < trace.long_fraction
        services.append(_lognormal(rng, trace.long_mean_s if long_job else trace.service_mean_s,
                                   trace.service_cv))
    members: list[list[int]] = [[] for _ in trace.bursts]
    for i, (_, b) in enumerate(tagged):
        if b >= 0:
            members[b].append(i)
    return Workload(trace, seed, tuple(t for t, _ in tagged), tuple(services),
                    tuple(tuple(m) for m in members))


def compress(workload: Workload, factor: float) -> Workload:
    """`workload` played `factor` times faster: every arrival time, service time and the trace's shape
    divided by `factor` (rates multiplied), the same messages in the same order. The replay harness
    (dev/replay) runs real workers on this, so the offered load (rate x service time) is unchanged.
    """
    if factor <= 0:
        raise ValueError(f"compression factor must be > 0, got {factor}")
    t = workload.trace
    shape = replace(t, duration_s=t.duration_s / factor,
                    rate_points=tuple((x / factor, r * factor) for x, r in t.rate_points),
                    bursts=tuple((x / factor, n) for x, n in t.bursts),
                    service_mean_s=t.service_mean_s / factor, long_mean_s=t.long_mean_s / factor)
    return Workload(shape, workload.seed, tuple(a / factor for a in workload.arrivals_s),
                    tuple(s / factor for s in workload.services_s), workload.burst_members)


def _spikes(seed: int, duration_s: float, base: float) -> tuple[tuple[float, float], ...]:
    """A fixed noisy shape: base rate with jitter and a spike every few minutes."""
    rng = random.Random(seed)
    pts: list[tuple[float, float]] = [(0.0, base)]
    t = 0.0
    while t < duration_s:
        t += rng.uniform(180, 420)
        width = rng.uniform(20, 60)
        height = rng.uniform(12, 20)
        pts += [(t, base * rng.uniform(0.7, 1.3)), (t + 2, height), (t + width, height),
                (t + width + 2, base * rng.uniform(0.7, 1.3))]
        t += width + 2
    return tuple(pts)


def _sine(base: float, amplitude: float, period_s: float, duration_s: float) -> tuple[tuple[float, float], ...]:
    steps = int(duration_s // 60)
    return tuple((i * 60.0, base + amplitude * math.sin(2 * math.pi * i * 60.0 / period_s))
                 for i in range(steps + 1))


#: The built-in traces, at the seed defaults' scale: 5 threads x 10 workers = 50 threads,
#: 2 s mean service, so full capacity is 25 messages/s.
TRACES: dict[str, Trace] = {t.name: t for t in (
    Trace("burst", 1800, ((0, 0.5),), bursts=((300, 5000),),
          description="5,000 messages at once on a quiet 0.5/s base"),
    Trace("ramp", 3600, ((0, 0.2), (1200, 20), (1800, 20), (3000, 0.2)),
          description="0.2 -> 20/s over 20 min, 10 min plateau, back down over 20 min"),
    Trace("diurnal", 3600, _sine(6, 5, 3600, 3600),
          description="a day compressed into an hour: 6 +/- 5/s sine"),
    Trace("spiky", 3600, _spikes(6, 3600, 3),
          description="3/s with jitter and a 20-60 s spike to 12-20/s every 3-7 min"),
    Trace("idle_burst", 5400, ((0, 0.02),), bursts=((3600, 5000),),
          description="an idle hour, then 5,000 messages at once"),
    Trace("long_jobs", 3600, ((0, 4),), long_fraction=0.01, long_mean_s=300,
          description="4/s of 2 s jobs with 1% of 300 s jobs mixed in"),
)}


#: Traces for the MAX_QUEUE_AGE rows, apart from `TRACES` (the seed table, with its targets):
#: where a count rule keeps the pool while messages wait for minutes.
AGE_TRACES: dict[str, Trace] = {t.name: t for t in (
    Trace("trickle", 3600, ((0, 0.5),), service_cv=0.5, long_fraction=0.03, long_mean_s=300,
          description="a slow steady trickle, 0.5/s of 2 s jobs, behind a few long jobs (3 % of 300 s)"),
)}


def load_trace(name_or_file: str) -> Trace:
    """A built-in trace by name, or a JSON file with `Trace`'s fields.

    Raises ValueError (with the reason on one line) for an unknown name or a malformed file.
    """
    if name_or_file in TRACES or name_or_file in AGE_TRACES:
        return {**TRACES, **AGE_TRACES}[name_or_file]
    path = Path(name_or_file)
    if not path.is_file():
        raise ValueError(f"unknown trace {name_or_file!r}: expected one of "
                         f"{', '.join([*TRACES, *AGE_TRACES])} or a JSON file")
    try:
        raw: dict[str, Any] = json.loads(path.read_text())
        known = {f.name for f in fields(Trace)}
        unknown = set(raw) - known
        if unknown:
            raise ValueError(f"unknown fields {sorted(unknown)}")
        raw.setdefault("name", path.stem)
        raw["rate_points"] = tuple((float(t), float(r)) for t, r in raw.get("rate_points", [(0, 0)]))
        raw["bursts"] = tuple((float(t), int(n)) for t, n in raw.get("bursts", []))
        trace = Trace(**raw)
    except (ValueError, TypeError, KeyError) as e:
        raise ValueError(f"trace file {path}: {e}") from None
    if trace.duration_s <= 0 or trace.service_mean_s <= 0 or any(r < 0 for _, r in trace.rate_points):
        raise ValueError(f"trace file {path}: duration, service mean must be > 0 and rates >= 0")
    return trace

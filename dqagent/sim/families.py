"""Pool shapes and trace families the default policy was not tuned on, drawn from stated ranges.

`draw_case(seed, k)` gives the k-th random case of a seed: a pool (processes x threads per unit,
start-up delay, MIN/MAX) and a trace from one family, scaled to that pool's capacity. The same
(seed, k) always gives the same case, so `dev/bench --random-pools K --seed S` is reproducible and a
held-out seed set is simply other seeds.

Ranges (also printed by `dev/bench --random-pools`):
- threads 1..16, processes 1..4 per unit, start-up 1..30 s, MIN 0..2, MAX 4..200 (log-uniform;
  flash crowds 50..200);
- mean service 0.5..20 s (log-uniform), CV 1 (heavy-tail: CV 3), stretched when needed so that full
  capacity stays <= 20 messages/s (keeps a case to tens of thousands of messages);
- families: heavy-tail (steady 30-70 % load, CV 3), on-off batches (a batch of 0.3..2 x the pool's
  threads at MAX every 5-15 min, nothing in between), slow diurnal (one or two cycles an hour, +/- 20 % noise
  every minute), flash crowd (a quiet pool hit by 60-90 % load for 5-10 min), mixed long jobs
  (1-3 % of jobs 30-100 x the mean, at most 900 s), ramp and spiky (the built-in shapes, rescaled).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from dqagent.sim.traces import Trace

FAMILIES = ("heavy_tail", "on_off", "diurnal_noise", "flash_crowd", "mixed_long", "ramp", "spiky")
#: Full capacity above this (messages/s) stretches the service time instead (bounds the message count).
MAX_RATE = 20.0


@dataclass(frozen=True, slots=True)
class Case:
    """One drawn pool and trace."""

    family: str
    processes: int
    threads: int
    startup_s: float
    min_workers: int
    max_workers: int
    trace: Trace

    @property
    def slots(self) -> int:
        """Messages one unit runs at once."""
        return self.processes * self.threads

    def label(self) -> str:
        return (f"{self.family} {self.processes}x{self.threads} up {self.startup_s:.0f}s "
                f"{self.min_workers}..{self.max_workers} svc {self.trace.service_mean_s:.1f}s")


def _log_uniform(rng: random.Random, lo: float, hi: float) -> float:
    return math.exp(rng.uniform(math.log(lo), math.log(hi)))


def draw_case(seed: int, k: int) -> Case:
    """The k-th case of `seed` (deterministic)."""
    rng = random.Random(f"dqagent-families-{seed}-{k}")
    family = FAMILIES[rng.randrange(len(FAMILIES))]
    threads = rng.randint(1, 16)
    processes = rng.randint(1, 4)
    startup = rng.uniform(1, 30)
    lo = rng.choice((0, 0, 1, 2))
    hi = round(_log_uniform(rng, 50 if family == "flash_crowd" else 4, 200))
    hi = max(hi, lo + 1)
    service = _log_uniform(rng, 0.5, 20)
    slots = processes * threads
    service = max(service, hi * slots / MAX_RATE)
    cap = hi * slots / service  # messages/s at MAX
    trace = _trace(rng, family, cap, service, slots)
    return Case(family, processes, threads, startup, lo, hi, trace)


def _trace(rng: random.Random, family: str, cap: float, service: float, slots: int) -> Trace:
    duration = 3600.0
    if family == "heavy_tail":
        return Trace(family, duration, ((0, cap * rng.uniform(0.3, 0.7)),), service_mean_s=service, service_cv=3.0)
    if family == "on_off":
        period = rng.uniform(300, 900)
        size = max(1, round(rng.uniform(0.3, 2) * slots * cap * service / slots))  # 0.3..2 x the threads at MAX
        bursts = tuple((t, size) for t in _steps(period / 3, duration, period))
        return Trace(family, duration, ((0, 0.0),), bursts=bursts, service_mean_s=service)
    if family == "diurnal_noise":
        period = rng.choice((1800.0, 3600.0))
        base, amp = cap * rng.uniform(0.3, 0.5), cap * rng.uniform(0.15, 0.3)
        noisy = tuple((t, max(0.0, (base + amp * math.sin(2 * math.pi * t / period)) * rng.uniform(0.8, 1.2)))
                      for t in _steps(0, duration, 60))
        return Trace(family, duration, noisy, service_mean_s=service)
    if family == "flash_crowd":
        at, width, level = rng.uniform(300, 900), rng.uniform(300, 600), cap * rng.uniform(0.6, 0.9)
        quiet = cap * 0.02
        crowd = ((0.0, quiet), (at, quiet), (at + 5, level), (at + width, level), (at + width + 30, quiet))
        return Trace(family, duration, crowd, service_mean_s=service)
    if family == "mixed_long":
        return Trace(family, duration, ((0, cap * rng.uniform(0.2, 0.4)),), service_mean_s=service,
                     long_fraction=rng.uniform(0.01, 0.03),
                     long_mean_s=min(900.0, service * rng.uniform(30, 100)))
    if family == "ramp":
        peak = cap * rng.uniform(0.6, 0.9)
        return Trace(family, duration, ((0, cap * 0.01), (1200, peak), (1800, peak), (3000, cap * 0.01)),
                     service_mean_s=service)
    # spiky
    base = cap * rng.uniform(0.1, 0.25)
    pts: list[tuple[float, float]] = [(0.0, base)]
    t = 0.0
    while t < duration:
        t += rng.uniform(180, 420)
        width, height = rng.uniform(20, 60), cap * rng.uniform(0.5, 0.8)
        pts += [(t, base), (t + 2, height), (t + width, height), (t + width + 2, base)]
        t += width + 2
    return Trace(family, duration, tuple(pts), service_mean_s=service)


def _steps(start: float, stop: float, step: float) -> list[float]:
    out, t = [], start
    while t < stop:
        out.append(t)
        t += step
    return out

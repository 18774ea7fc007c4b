"""The guard (pure): how much of a wanted scale-up the host can take, from its headroom figures.

No I/O: `dqagent.host.pressure` reads the figures (PSI, /proc/meminfo, the workers' MemoryCurrent over D-Bus)
and the agent applies the verdict between the policy's decision and the reconciler. Contract
(property-tested): the guarded target is never above the policy's target, never below the current
pool (or MIN_PROCESSES), a scale-down or an unchanged target passes untouched, and more headroom never
allows fewer workers.

Holds, in this order of report: memory pressure (`some avg10` above the limit, or `full avg10` above
half of it), CPU pressure (`some avg10` above its limit): fully, no worker added; then memory room:
only as many workers as fit in MemAvailable minus the reserve, at the size measured so far (a high
percentile of the running workers' memory). A figure that is unknown (no PSI file, no accounting)
does not hold anything.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

#: The percentile of the running workers' memory taken as the size of one more worker.
WORKER_SIZE_PERCENTILE = 90


@dataclass(frozen=True, slots=True)
class Headroom:
    """What the host has left right now; None where the figure is unknown (and so not guarded)."""

    #: PSI `some avg10` of CPU and memory, `full avg10` of memory: percent of the last ~10 s stalled.
    cpu_some: float | None = None
    memory_some: float | None = None
    memory_full: float | None = None
    #: /proc/meminfo MemAvailable and MemTotal, bytes.
    mem_available: int | None = None
    mem_total: int | None = None
    #: The memory one more worker is expected to take, bytes (see `worker_size`).
    worker_bytes: int | None = None


@dataclass(frozen=True, slots=True)
class Limits:
    """The guard's settings: GUARD_CPU_PRESSURE, GUARD_MEMORY_PRESSURE (percent), the reserve in bytes."""

    cpu_pressure: float
    memory_pressure: float
    memory_reserve: int

    @property
    def memory_full_pressure(self) -> float:
        """`full` (every task stalled at once: thrashing) holds at half the `some` limit."""
        return self.memory_pressure / 2


@dataclass(frozen=True, slots=True)
class Verdict:
    """The guarded target and, when it is below the wanted one, which figure held it and why."""

    target: int
    wanted: int
    #: "" (not holding), "memory", "memory_full", "cpu" or "memory_available".
    resource: str = ""
    figure: float = 0.0
    limit: float = 0.0
    reason: str = ""

    @property
    def holding(self) -> bool:
        return self.target < self.wanted

    def status(self) -> str:
        """For STATUS=: `guard: cpu pressure 63% > 40%, holding at 4 of 7 wanted`; "" when not holding."""
        if not self.holding:
            return ""
        return f"guard: {self.reason}, holding at {self.target} of {self.wanted} wanted"


def worker_size(samples: Sequence[int], percentile: int = WORKER_SIZE_PERCENTILE) -> int | None:
    """The `percentile` (nearest rank) of the running workers' memory, bytes; None without a sample."""
    if not samples:
        return None
    ordered = sorted(samples)
    rank = max(1, math.ceil(percentile / 100 * len(ordered)))
    return ordered[rank - 1]


def resolve_bytes(value: str, mem_total: int | None) -> int | None:
    """A size in the settings' rendered form ("123" bytes, "N%" of MemTotal) in bytes; None when it is
    no size ("", "infinity") or a percentage without a MemTotal to take it of."""
    if value.endswith("%"):
        return None if mem_total is None else int(mem_total * float(value[:-1]) / 100)
    return int(value) if value.isdigit() else None


def _pct(x: float) -> str:
    return f"{x:.0f}%" if x >= 10 or x == int(x) else f"{x:.1f}%"


def _size(n: float) -> str:
    for unit, factor in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if abs(n) >= factor:
            return f"{n / factor:.1f} {unit}"
    return f"{n:.0f} B"


def fitting_workers(h: Headroom, reserve: int, starting: int = 0) -> float:
    """How many more workers fit in MemAvailable minus the reserve (inf when nothing limits it), less the
    `starting` ones, which MemAvailable may not show yet."""
    if h.mem_available is None:
        return math.inf
    room = h.mem_available - reserve
    if room <= 0:
        return 0
    if not h.worker_bytes:  # size unknown: only the reserve holds
        return math.inf
    return max(0, room // h.worker_bytes - starting)


def decide(pool: int, wanted: int, floor: int, h: Headroom, lim: Limits, starting: int = 0) -> Verdict:
    """The target the host can take: `wanted` when it is no increase over `pool` or nothing holds it.

    `floor` (MIN_PROCESSES) is never held: the operator's minimum, restored by systemd's Restart= anyway.
    `starting`: workers of the pool started so recently that their memory may not show in MemAvailable yet.
    """
    base = max(pool, min(floor, wanted))
    if wanted <= base:
        return Verdict(wanted, wanted)
    pressures = (
        ("memory", "memory pressure", h.memory_some, lim.memory_pressure),
        ("memory_full", "memory full pressure", h.memory_full, lim.memory_full_pressure),
        ("cpu", "cpu pressure", h.cpu_some, lim.cpu_pressure),
    )
    for resource, words, figure, limit in pressures:
        if figure is not None and figure > limit:
            return Verdict(base, wanted, resource, figure, limit, f"{words} {_pct(figure)} > {_pct(limit)}")
    fit = fitting_workers(h, lim.memory_reserve, starting)
    if base + fit >= wanted:
        return Verdict(wanted, wanted)
    allowed = base + int(fit)
    assert h.mem_available is not None
    need = lim.memory_reserve + (h.worker_bytes or 0)
    each = f", {int(fit)} more of {_size(h.worker_bytes)} fit" if h.worker_bytes else ""
    each += f" ({starting} still starting)" if starting and h.worker_bytes else ""
    return Verdict(allowed, wanted, "memory_available", float(h.mem_available), float(need),
                   f"memory available {_size(h.mem_available)} - reserve {_size(lim.memory_reserve)}{each}")

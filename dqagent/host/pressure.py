"""The guard's host reads, and its memory of a hold: PSI, /proc/meminfo, the workers' MemoryCurrent.

Reads `/proc/pressure/cpu`, `/proc/pressure/memory` (`some`/`full avg10`, kernel >= 4.20, absent with
`psi=0`) and `/proc/meminfo` (MemAvailable, MemTotal) under GUARD_PROC_DIR (`/proc`; another directory
only for tests), and the running workers' `MemoryCurrent` through the systemd client (D-Bus), only
before a scale-up. A file that is missing disables its part of the guard with one warning when the
agent starts (`guard_source_missing`). The decision itself is `dqagent.core.guard.decide` (pure), applied by
the decision step (`dqagent.core.step`), which asks for this read only when it wants a scale-up.

A hold is logged once when it starts (`guard_blocked`) and once when it ends (`guard_released`),
with RESOURCE=, FIGURE= and LIMIT=.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

from dqagent.core.guard import Headroom, Limits, Verdict, resolve_bytes, worker_size
from dqagent.core.step import Host
from dqagent.errors import DqAgentError
from dqagent.report.logs import event
from dqagent.settings.config import Settings

log = logging.getLogger(__name__)

#: The guard's files under GUARD_PROC_DIR, by the part of the guard they feed.
SOURCES = {"cpu": "pressure/cpu", "memory": "pressure/memory", "meminfo": "meminfo"}


@runtime_checkable
class MemoryReader(Protocol):
    """What the guard needs from `dqagent.systemd.client.SystemdClient`: the running workers' MemoryCurrent."""

    async def worker_memory(self) -> list[int]: ...


def parse_psi(text: str) -> dict[str, float]:
    """`some`/`full` -> avg10 (percent) from a /proc/pressure file; lines it does not know are skipped."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        kind, _, rest = line.partition(" ")
        fields = dict(part.split("=", 1) for part in rest.split() if "=" in part)
        try:
            out[kind] = float(fields["avg10"])
        except (KeyError, ValueError):
            continue
    return out


def parse_meminfo(text: str) -> tuple[int | None, int | None]:
    """(MemAvailable, MemTotal) in bytes from /proc/meminfo; None for a line that is missing."""
    values: dict[str, int] = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        parts = rest.split()
        if key in ("MemAvailable", "MemTotal") and parts and parts[0].isdigit():
            values[key] = int(parts[0]) * (1024 if parts[1:] == ["kB"] else 1)
    return values.get("MemAvailable"), values.get("MemTotal")


def limits(settings: Settings, mem_total: int | None) -> Limits:
    """The guard's limits; a percentage reserve is of MemTotal (none known: no reserve)."""
    return Limits(cpu_pressure=settings.guard_cpu_pressure, memory_pressure=settings.guard_memory_pressure,
                  memory_reserve=resolve_bytes(settings.guard_memory_reserve, mem_total) or 0)


@dataclass(frozen=True, slots=True)
class Unreadable:
    """A guard file that could not be read, and the system's reason (e.g. "No such file or directory")."""

    path: str
    why: str

    def __str__(self) -> str:
        return f"{self.path}: {self.why}"


@dataclass(frozen=True, slots=True)
class Reading:
    """One read of the host: the headroom figures, and the files that could not be read, by guard part."""

    headroom: Headroom
    missing: dict[str, Unreadable]


def read_host(settings: Settings, memory_samples: list[int]) -> Reading:
    """Read the PSI and meminfo files under GUARD_PROC_DIR; `memory_samples` are the workers' bytes."""
    base = Path(settings.guard_proc_dir)
    texts: dict[str, str] = {}
    missing: dict[str, Unreadable] = {}
    for part, name in SOURCES.items():
        try:
            texts[part] = (base / name).read_text()
        except OSError as exc:
            missing[part] = Unreadable(str(base / name), exc.strerror or str(exc))
    cpu = parse_psi(texts.get("cpu", ""))
    memory = parse_psi(texts.get("memory", ""))
    available, total = parse_meminfo(texts.get("meminfo", ""))
    measured = worker_size(memory_samples)
    # Nothing measured yet (accounting off, or no worker running): the per-worker limit, when set, is the size.
    size = measured if measured is not None else (
        resolve_bytes(settings.worker_memory_high, total) or resolve_bytes(settings.worker_memory_max, total))
    headroom = Headroom(cpu_some=cpu.get("some"), memory_some=memory.get("some"), memory_full=memory.get("full"),
                        mem_available=available, mem_total=total, worker_bytes=size)
    return Reading(headroom, missing)


def figure_of(h: Headroom, resource: str) -> float | None:
    """The current figure of `resource` in `h` (for guard_released)."""
    return {"cpu": h.cpu_some, "memory": h.memory_some, "memory_full": h.memory_full,
            "memory_available": None if h.mem_available is None else float(h.mem_available)}.get(resource)


class HostGuard:
    """Reads the host's headroom for a scale-up and remembers the hold in progress (for its two log lines).

    `memory` reads the running workers' MemoryCurrent (the systemd client); None: not measured.
    """

    def __init__(self, memory: MemoryReader | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self._memory = memory
        self._clock = clock
        self.holding: Verdict | None = None
        self._since = 0.0
        self.last: Headroom | None = None
        self._warned: set[str] = set()

    def warn_missing(self, settings: Settings) -> None:
        """At start (and after a reload): one warning per guard file that cannot be read."""
        if not settings.guard:
            return
        for part, why in read_host(settings, []).missing.items():
            if part not in self._warned:
                self._warned.add(part)
                log.warning("guard: %s unreadable (%s); that part of the guard is off (a kernel without PSI, "
                            "or booted with psi=0)", SOURCES[part], why,
                            extra=event("guard_source_missing", resource=part, path=why.path))

    async def read(self, settings: Settings) -> Host:
        """Read the host for a scale-up (the decision step asks only then): PSI, meminfo, the workers'
        MemoryCurrent (a D-Bus read per running worker), and the limits resolved against MemTotal."""
        samples: list[int] = []
        if self._memory is not None:
            try:
                samples = await self._memory.worker_memory()
            except DqAgentError as exc:  # the tick's own systemd reads report a real outage
                log.debug("guard: workers' MemoryCurrent unreadable: %s", exc)
        reading = read_host(settings, samples)
        self.last = reading.headroom
        return Host(reading.headroom, limits(settings, reading.headroom.mem_total))

    def note(self, verdict: Verdict, pool: int) -> None:
        """Log a hold when it starts (`guard_blocked`) and when it ends (`guard_released`)."""
        self._transition(verdict, pool)

    def _transition(self, verdict: Verdict, pool: int) -> None:
        held = self.holding
        if verdict.holding and held is None:
            self._since = self._clock()
            log.warning("scale-up held by the guard: %s (holding at %d of %d wanted)", verdict.reason,
                        verdict.target, verdict.wanted,
                        extra=event("guard_blocked", resource=verdict.resource, figure=round(verdict.figure, 2),
                                    limit=round(verdict.limit, 2), workers=verdict.target, wanted=verdict.wanted))
        elif verdict.holding and held is not None and held.resource != verdict.resource:
            log.debug("guard still holding, now for %s", verdict.reason)
        elif not verdict.holding and held is not None:
            now = None if self.last is None else figure_of(self.last, held.resource)
            log.info("guard released after %.0fs: %s %s (limit %g), %d wanted", self._clock() - self._since,
                     held.resource, "unknown" if now is None else f"{now:g}", held.limit, verdict.wanted,
                     extra=event("guard_released", resource=held.resource,
                                 figure="" if now is None or math.isnan(now) else round(now, 2),
                                 limit=round(held.limit, 2), workers=pool, wanted=verdict.wanted,
                                 held_s=round(self._clock() - self._since, 1)))
        self.holding = verdict if verdict.holding else None

"""Each check's view of what every worker is doing: the reports read (`dqagent.host.reports`), the sightings
kept from check to check, and the hung ones (`dqagent.core.busy`), per pool; and the log line of a restart.

Without the app's opt-in there is no report: every pool's loads are empty, nothing is hung, and the
reconciler stops the highest numbers as before.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from dqagent.core import busy
from dqagent.core.busy import Load, Sighting
from dqagent.core.snapshot import WorkerCounts
from dqagent.core.units import UnitState, of_pool, worker_unit
from dqagent.host.reports import REPORT_ROOT, by_instance, read_loads
from dqagent.report.logs import event

log = logging.getLogger("dqagent.agent.loop")


@dataclass(slots=True)
class Watch:
    """One pool's sightings between checks, and this check's loads and hung units."""

    sightings: dict[int, Sighting] = field(default_factory=dict)
    loads: dict[int, Load] = field(default_factory=dict)
    hung: frozenset[int] = frozenset()


def read_all(states: Sequence[UnitState], root: Path = REPORT_ROOT) -> dict[str, Load]:
    """Every running unit's reports: small files on tmpfs (/run), read in the check itself (about 20 us a
    unit, measured; a thread would cost more than the reads and let jobs move between listing and deciding)."""
    return read_loads(states, root)


def update(watch: Watch, loads: Mapping[str, Load], units: Sequence[UnitState], now_s: float,
           hung_after_s: float | None) -> Watch:
    """This check's loads and hung units of one pool (`units`: its own), and the sightings carried on."""
    mine = by_instance(loads, units)
    running = {s.instance: s.active_enter_us for s in units if s.running}
    sightings = busy.sight(watch.sightings, running, mine, now_s)
    return Watch(sightings, mine, busy.hung(sightings, running, now_s, hung_after_s))


def watch_pools(watches: Mapping[str, Watch], hung_after_s: Mapping[str, float | None], states: Sequence[UnitState],
                root: Path, now_s: float) -> dict[str, Watch]:
    """Every pool's watch after this check's reads (`hung_after_s`: each pool's WORKER_HUNG_AFTER)."""
    loads = read_all(states, root)
    return {name: update(watches.get(name, Watch()), loads, of_pool(states, name), now_s, after)
            for name, after in hung_after_s.items()}


def restarted(watch: Watch, pool: str, numbers: Sequence[int], now_s: float, hung_after_s: float | None) -> None:
    """The hung units being restarted: one WARNING `worker_hung` each, with how long its report has been still;
    each next activation is judged afresh, from its first report."""
    log_restarts(pool, numbers, watch, now_s, hung_after_s)
    for n in numbers:
        watch.sightings.pop(n, None)


def log_restarts(pool: str, numbers: Sequence[int], watch: Watch, now_s: float, hung_after_s: float | None) -> None:
    """One WARNING `worker_hung` per unit restarted, with how long its report has been still."""
    for n in numbers:
        unit = worker_unit(n, pool)
        seen = watch.sightings.get(n)
        still_s = round(now_s - seen.advanced_s, 1) if seen is not None else 0.0
        log.warning("%s hung: no report for %.0fs (WORKER_HUNG_AFTER=%g); restarting it", unit, still_s,
                    hung_after_s or 0, extra=event("worker_hung", unit=unit, dqagent_pool=pool, seconds=still_s,
                                                   hung_after_s=hung_after_s))


def activity(watch: Watch | None, workers: WorkerCounts | None) -> tuple[tuple[str, int], ...]:
    """The snapshot's busy/idle/unreported counts of one pool's running workers (() before its first check)."""
    if watch is None or workers is None:
        return ()
    idle = sum(1 for load in watch.loads.values() if load.idle)
    busy_n = len(watch.loads) - idle
    return (("busy", busy_n), ("idle", idle), ("unreported", max(0, workers.running - len(watch.loads))))

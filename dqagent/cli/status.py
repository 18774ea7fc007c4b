"""`dqagent status`: a report built from live systemd and Redis state, for any user.

Whatever cannot be read (Redis down, a credential the user may not read, no system bus) is
reported as unavailable in the output, never as a traceback. `--json` keeps the old manager's
keys (`queue_length`, `current_processes`, ... `process_list`) so existing scripts keep working: at
the top level they describe the default pool (the pool of dqagent.env), and `pools` has the same keys for
every pool (the default pool included). The text for a terminal is `dqagent.cli.status_text`.

For a failing worker (`UnitState.crashed_since_start`: failed, waiting to be restarted after a crash,
or restarted by systemd since its last start) it adds systemd's `Result`, the main process's exit and
the last line the worker logged (from the journal, when this user may read it; otherwise the
`journalctl` command that shows more), and it shows the agent's own `STATUS=` text.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from dqagent.cli.status_broker import Pending
from dqagent.cli.status_text import _guard_lines, render_text
from dqagent.core.busy import Load
from dqagent.core.demand import QueueDemand
from dqagent.core.pause import Pause
from dqagent.core.prediction import ForecastReport
from dqagent.core.units import AGENT_UNIT, UnitState, of_pool
from dqagent.core.untrusted import RecordKind, Rejection
from dqagent.errors import DqAgentError
from dqagent.host.reports import read_loads
from dqagent.report import journal, statusdoc
from dqagent.report.statusdoc import POOL_KEYS, Failure, GuardReading, PoolView, StatusView, document, schedule_report
from dqagent.settings.config import Settings
from dqagent.settings.parsers import DEFAULT_POOL
from dqagent.settings.pools import Pool
from dqagent.settings.sources import Loaded
from dqagent.systemd.client import SystemdClient

__all__ = ["POOL_KEYS", "_guard_lines", "collect", "guard_report", "render_json", "render_text", "schedule_report"]


async def _failure(client: SystemdClient, st: UnitState) -> Failure:
    """What is known about why `st` fails beyond its state: the main process's exit, and its last line."""
    try:
        code = int(await client.unit_property(st.unit, "Service", "ExecMainCode"))
        status = int(await client.unit_property(st.unit, "Service", "ExecMainStatus"))
    except DqAgentError:
        code = status = 0
    return Failure(code, status, journal.last_line(st.unit))


async def collect(loaded: Loaded, bus_address: str | None, broker: Pending | None = None) -> dict[str, Any]:
    """Read everything the report shows (each source fails on its own) and build it (`statusdoc.document`).

    All pools' queues are read in one broker read, all their units in one systemd listing, both at once.
    `broker`: the broker read already started (`Pending.start`, before the imports); None: started here.
    """
    pools = loaded.pools or (Pool(DEFAULT_POOL, loaded.settings),)
    # At once: Redis answers while systemd is read.
    answer, seen = await asyncio.gather((broker if broker is not None else Pending(loaded, pools)).result(),
                                        _read_systemd(pools, loaded.settings, bus_address))
    top, figures = answer.get("report", {}), answer.get("pools", {})
    pauses = _read_pauses()
    views = tuple(PoolView(p, _queues(figures.get(p.name)), seen.units.get(p.name), pauses.get(p.name),
                           seen.failures, seen.loads, _read_forecast(p)) for p in pools)
    view = StatusView(loaded.settings, loaded.env_file, views, time.time(), redis_error=top.get("redis_error"),
                      rejected=tuple(Rejection(RecordKind(r["kind"]), r["key"], r["reason"])
                                     for r in top.get("broker_data_rejected", [])),
                      systemd_error=seen.error, agent_state=seen.agent_state,
                      agent_status_text=seen.agent_status_text, guard=seen.guard, undeclared=seen.undeclared,
                      cpu_count=os.cpu_count())
    return document(view)


def _queues(figures: dict[str, Any] | None) -> tuple[QueueDemand, ...] | None:
    """A pool's queues from the broker read's figures (`dqagent.cli.status_broker`); None: not read."""
    if figures is None or "queues" not in figures:
        return None
    return tuple(QueueDemand(name, q["ready"], q["ready"] + q["in_flight"], q["delayed"], q["dead_lettered"],
                             q["orphaned"], q["oldest_age_s"], q.get("consumers"), q.get("in_flight_known", True))
                 for name, q in figures["queues"].items())


def _read_pauses() -> dict[str, Pause]:
    """Each pool's pause as the agent keeps it (pauses.json in its state directory, readable by any user)."""
    from dqagent.agent.pausing import read_pauses, state_dir

    return read_pauses(state_dir())


def _read_forecast(pool: Pool) -> ForecastReport | None:
    """The pool's forecast as the agent last saved it (its state file, readable by any user); None: off."""
    if pool.settings.predictive == "off":
        return None
    from dqagent.agent.forecasting import read_report
    from dqagent.agent.pausing import state_dir

    return read_report(state_dir(), pool.name)


@dataclass
class _Systemd:
    """What one systemd read gave: each declared pool's units, the agent's unit, the guard's reading."""

    units: dict[str, tuple[UnitState, ...]] = field(default_factory=dict)
    failures: dict[str, Failure] = field(default_factory=dict)
    undeclared: tuple[UnitState, ...] = ()
    agent_state: str = "unknown"
    agent_status_text: str | None = None
    guard: GuardReading | None = None
    #: The running workers' own reports (`dqagent.host.reports`), by unit name; None: systemd was not read.
    loads: dict[str, Load] | None = None
    error: str | None = None


async def _read_systemd(pools: Sequence[Pool], s: Settings, bus_address: str | None) -> _Systemd:
    """Every pool's workers and the agent's unit (one listing of all units), or the error; with GUARD on, the
    host as the guard would read it (with the running workers' MemoryCurrent)."""
    seen = _Systemd()
    client = SystemdClient(bus_address, call_timeout_s=s.dbus_timeout_s)
    memory: list[int] = []
    try:
        await client.connect()
        states = await client.worker_states()
        seen.agent_state = str(await client.unit_property(AGENT_UNIT, "Unit", "ActiveState"))
    except DqAgentError as exc:
        seen.error = str(exc)
        client.close()
        return _guarded(seen, s, memory)
    try:
        with contextlib.suppress(DqAgentError):  # not installed: no Service interface to read
            seen.agent_status_text = str(await client.unit_property(AGENT_UNIT, "Service", "StatusText"))
        declared = {p.name for p in pools}
        seen.units = {p.name: tuple(of_pool(states, p.name)) for p in pools}
        seen.undeclared = tuple(st for st in states if st.pool not in declared)
        seen.loads = read_loads(st for st in states if st.pool in declared)
        # Read one by one: failing units are few, and this stays far below the bus's pending-reply limit.
        seen.failures = {st.unit: await _failure(client, st) for st in states
                         if st.pool in declared and st.crashed_since_start}
        if s.guard:
            with contextlib.suppress(DqAgentError):
                memory = await client.worker_memory()
    finally:
        client.close()
    return _guarded(seen, s, memory)


def _guarded(seen: _Systemd, s: Settings, memory: list[int]) -> _Systemd:
    """With GUARD on: the host's headroom as the agent would read it now."""
    if s.guard:
        from dqagent.host.pressure import limits, read_host

        reading = read_host(s, memory)
        seen.guard = GuardReading(reading.headroom, limits(s, reading.headroom.mem_total),
                                  {part: str(why) for part, why in reading.missing.items()}, len(memory))
    return seen


def guard_report(s: Settings, memory: list[int], workers: int | None, agent_status: str | None) -> dict[str, Any]:
    """The guard's figures as the agent would read them now, and whether it would let one more worker start."""
    g = _guarded(_Systemd(), s, memory).guard
    assert g is not None, "guard_report needs GUARD on"
    return statusdoc.guard_report(g, workers, agent_status)


def render_json(report: dict[str, Any]) -> str:
    return json.dumps(report, indent=2, sort_keys=False)


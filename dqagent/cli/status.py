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
from datetime import UTC, datetime
from typing import Any

from dqagent.cli.status_broker import Pending
from dqagent.cli.status_text import _guard_lines, render_text
from dqagent.core.busy import status_of
from dqagent.core.policies import thresholds
from dqagent.core.schedule import in_force, local_text, next_change
from dqagent.core.units import AGENT_UNIT, UnitState, describe_exit, of_pool
from dqagent.errors import DqAgentError
from dqagent.host.reports import read_loads
from dqagent.report import journal
from dqagent.settings.config import Settings
from dqagent.settings.parsers import DEFAULT_POOL
from dqagent.settings.pools import Pool
from dqagent.settings.schedule import zone_for
from dqagent.settings.sources import Loaded
from dqagent.settings.workercmd import WorkerShape, worker_shape
from dqagent.systemd.client import SystemdClient

__all__ = ["POOL_KEYS", "_guard_lines", "collect", "guard_report", "render_json", "render_text"]


def _iso(us: int) -> str | None:
    return datetime.fromtimestamp(us / 1e6, UTC).isoformat(timespec="seconds") if us else None


async def _failure(client: SystemdClient, st: UnitState) -> dict[str, Any]:
    """What is known about why `st` fails: systemd's result and exit, and the last line it logged."""
    try:
        code = int(await client.unit_property(st.unit, "Service", "ExecMainCode"))
        status = int(await client.unit_property(st.unit, "Service", "ExecMainStatus"))
    except DqAgentError:
        code = status = 0
    line = journal.last_line(st.unit)
    return {"unit": st.unit, "state": f"{st.active_state}/{st.sub_state}", "result": st.result,
            "restarts": st.n_restarts, "exit_code": code or None, "exit_status": status if code else None,
            "exit": describe_exit(code, status), "last_line": line,
            "more": f"journalctl -u {st.unit}"}


async def collect(loaded: Loaded, bus_address: str | None, broker: Pending | None = None) -> dict[str, Any]:
    """Read everything the report shows; each source fails on its own.

    The top-level keys describe the default pool (the old manager's keys, unchanged) and the host; `pools`
    has one entry per pool, the default pool first, each with the keys of `POOL_KEYS`. All pools' queues are
    read in one broker read, all their units in one systemd listing, both at once. `broker`: the broker read
    already started (`Pending.start`, before the imports); None: started here.
    """
    pools = loaded.pools or (Pool(DEFAULT_POOL, loaded.settings),)
    s = loaded.settings
    report = _blank(loaded)
    parts = {p.name: _blank_pool(p, loaded) for p in pools}
    shapes = {p.name: _read_shape(parts[p.name], p.settings) for p in pools}
    # At once: Redis answers while systemd is read (they fill different keys).
    _, (memory, running) = await asyncio.gather(
        _take_broker(report, parts, broker if broker is not None else Pending(loaded, pools)),
        _read_systemd(report, parts, pools, shapes, bus_address))
    if s.guard:
        report["guard"] = guard_report(s, memory, running, report["agent_status_text"])
    _read_pauses(parts)
    report.update(parts[DEFAULT_POOL])
    report["pools"] = parts
    return report


#: The keys each entry of `pools` has; the top level has them too, for the default pool.
POOL_KEYS = ("queue_length", "current_processes", "min_processes", "max_processes", "scale_up_threshold",
             "scale_down_threshold", "process_list", "queues", "queue_metric", "scaling_policy", "max_queue_age_s",
             "worker_shape", "command_error", "failing_workers", "pool_priority", "settings_file", "schedule",
             "pause")


def _read_pauses(parts: dict[str, dict[str, Any]]) -> None:
    """Each pool's pause as the agent keeps it (pauses.json in its state directory, readable by any user)."""
    import time

    from dqagent.agent.pausing import read_pauses, state_dir, until_text

    now = time.time()
    for name, p in read_pauses(state_dir()).items():
        if name in parts and p.active_at(now):
            parts[name]["pause"] = {"by": p.user, "uid": p.uid, "since": until_text(p.since_s),
                                    "until": None if p.until_s is None else until_text(p.until_s),
                                    "reason": p.reason, "at": p.at, "status": p.status(now)}


def _blank(loaded: Loaded) -> dict[str, Any]:
    """The report before any read: every key, what is not read yet as None or empty."""
    s = loaded.settings
    return {
        "queue_length": None,
        "current_processes": None,
        "min_processes": s.min_processes,
        "max_processes": s.max_processes,
        "scale_up_threshold": None,
        "scale_down_threshold": None,
        "monitoring_active": False,
        "monitor_state": "unknown",
        "process_list": [],
        "queues": {},
        "queue_metric": str(s.queue_metric),
        "scaling_policy": s.scaling_policy,
        "max_queue_age_s": s.max_queue_age_s,
        "redis": s.redis_location(),
        #: The file these settings came from; None: no file, defaults (and the environment) only.
        "settings_file": str(loaded.env_file) if loaded.env_file is not None else None,
        "redis_error": None,
        "systemd_error": None,
        "worker_shape": None,
        "command_error": None,
        "agent_status_text": None,
        "failing_workers": [],
        "guard": None,
        #: Broker data the read skipped as untrusted: [{"kind", "key", "reason"}] (dqagent.core.untrusted).
        "broker_data_rejected": [],
        "pool_priority": s.pool_priority,
        #: SCHEDULE now: the windows in force and the next change (`schedule_report`); None: no SCHEDULE.
        "schedule": schedule_report(s, time.time() * 1e6),
        #: HOST_MAX_PROCESSES: most workers of all pools together; None: no host cap.
        "host_max_processes": s.host_max_processes,
        #: Worker units of pools no file declares (a pool file removed while its units run): not counted.
        "undeclared_workers": [],
        "pools": {},
    }


def _blank_pool(pool: Pool, loaded: Loaded) -> dict[str, Any]:
    """One pool's part of the report before any read (`POOL_KEYS`)."""
    s = pool.settings
    file = pool.path if pool.path is not None else loaded.env_file
    return {"queue_length": None, "current_processes": None, "min_processes": s.min_processes,
            "max_processes": s.max_processes, "scale_up_threshold": None, "scale_down_threshold": None,
            "process_list": [], "queues": {}, "queue_metric": str(s.queue_metric), "scaling_policy": s.scaling_policy,
            "max_queue_age_s": s.max_queue_age_s, "worker_shape": None, "command_error": None, "failing_workers": [],
            "pool_priority": s.pool_priority, "settings_file": str(file) if file is not None else None,
            "schedule": schedule_report(s, time.time() * 1e6),
            #: `dqagent pause`: {"by", "uid", "since", "until" (None: until resumed), "reason", "at", "status"}.
            "pause": None}


def schedule_report(s: Settings, now_us: float) -> dict[str, Any] | None:
    """SCHEDULE at `now_us`: the windows in force (a floor from PROCESS_STARTUP_DELAY before its window; the
    agent adds the measured start time), the floor and ceiling, and the next change; None without SCHEDULE."""
    if not s.schedule:
        return None
    zone = zone_for(s.schedule_timezone)
    lead = s.process_startup_delay_s
    now = in_force(s.schedule, zone, now_us, lead)
    change = next_change(s.schedule, zone, now_us, lead)
    nxt = None if change is None else {
        "at": _iso(int(change[0])), "local": local_text(change[0], zone), "windows": list(change[1].windows),
        "warming": list(change[1].warming), "floor": change[1].floor, "ceiling": change[1].ceiling}
    return {"timezone": s.schedule_timezone or str(zone), "entries": [w.text for w in s.schedule.windows],
            "windows": list(now.windows), "warming": list(now.warming), "floor": now.floor, "ceiling": now.ceiling,
            "next_change": nxt}


def _read_shape(part: dict[str, Any], s: Settings) -> WorkerShape | None:
    """DRAMATIQ_COMMAND's shape into `part`; None if Dramatiq's parser rejects the command."""
    try:
        shape = worker_shape(s.dramatiq_command, os.cpu_count())
    except DqAgentError as exc:
        part["command_error"] = str(exc)
        return None
    part["worker_shape"] = {"processes": shape.processes, "threads": shape.threads,
                            "queues": list(shape.queues) if shape.queues else None,
                            "is_dramatiq": shape.is_dramatiq}
    return shape


async def _take_broker(report: dict[str, Any], parts: dict[str, dict[str, Any]], broker: Pending) -> None:
    """Every pool's queues (read by `dqagent.cli.status_broker`, in a child process when it could fork), or
    `redis_error`, into the report."""
    answer = await broker.result()
    report.update(answer.get("report", {}))
    for name, figures in answer.get("pools", {}).items():
        if name in parts:
            parts[name].update(figures)


def _process(st: UnitState) -> dict[str, Any]:
    """One unit as `process_list` shows it."""
    return {"unit": st.unit, "pid": st.main_pid or None, "start_time": _iso(st.active_enter_us),
            "status": st.sub_state if st.running else f"{st.active_state}/{st.sub_state}",
            "result": st.result, "restarts": st.n_restarts}


async def _read_systemd(report: dict[str, Any], parts: dict[str, dict[str, Any]], pools: Sequence[Pool],
                        shapes: dict[str, WorkerShape | None], bus_address: str | None) -> tuple[list[int], int | None]:
    """Every pool's workers into its part and the agent's unit into `report` (one listing of all units), or
    `systemd_error`; returns the running workers' MemoryCurrent (for the guard's figures; read only with GUARD
    on) and how many workers of the declared pools run (None: not read)."""
    s = pools[0].settings
    client = SystemdClient(bus_address, call_timeout_s=s.dbus_timeout_s)
    memory: list[int] = []
    try:
        await client.connect()
        states = await client.worker_states()
        agent_state = str(await client.unit_property(AGENT_UNIT, "Unit", "ActiveState"))
    except DqAgentError as exc:
        report["systemd_error"] = str(exc)
        client.close()
        return memory, None
    try:
        report["monitor_state"] = agent_state
        report["monitoring_active"] = agent_state == "active"
        with contextlib.suppress(DqAgentError):  # not installed: no Service interface to read
            report["agent_status_text"] = str(await client.unit_property(AGENT_UNIT, "Service", "StatusText"))
        declared = {p.name for p in pools}
        running = 0
        for pool in pools:
            mine = of_pool(states, pool.name)
            running += await _pool_units(client, parts[pool.name], pool.settings, shapes[pool.name], mine)
        report["undeclared_workers"] = [{**_process(st), "pool": st.pool} for st in states if st.pool not in declared]
        if s.guard:
            with contextlib.suppress(DqAgentError):
                memory = await client.worker_memory()
    finally:
        client.close()
    return memory, running


async def _pool_units(client: SystemdClient, part: dict[str, Any], s: Settings, shape: WorkerShape | None,
                      states: Sequence[UnitState]) -> int:
    """One pool's units into its part; returns how many run."""
    n = sum(1 for st in states if st.running)
    part["current_processes"] = n
    if shape is not None:
        part["scale_up_threshold"], part["scale_down_threshold"] = thresholds(s, n, shape)
    # Read one by one: failing units are few, and this stays far below the bus's pending-reply limit.
    part["failing_workers"] = [await _failure(client, st) for st in states if st.crashed_since_start]
    part["process_list"] = [_process(st) for st in states]
    loads, now = read_loads(states), time.time()  # the workers' own reports (dqagent.dramatiq.WorkerReport)
    for w, st in zip(part["process_list"], states, strict=True):
        w["report"] = status_of(loads.get(st.unit), now, s.worker_hung_after_s)
    return n


def guard_report(s: Settings, memory: list[int], workers: int | None, agent_status: str | None) -> dict[str, Any]:
    """The guard's figures as the agent would read them now, and whether it would let one more worker start."""
    from dqagent.core.guard import decide
    from dqagent.host.pressure import limits, read_host

    reading = read_host(s, memory)
    h, lim = reading.headroom, limits(s, reading.headroom.mem_total)
    pool = workers or 0
    verdict = decide(pool, pool + 1, 0, h, lim)
    held = next((part.strip() for part in (agent_status or "").split(";") if part.strip().startswith("guard:")), None)
    return {"cpu_some_avg10": h.cpu_some, "memory_some_avg10": h.memory_some, "memory_full_avg10": h.memory_full,
            "mem_available_bytes": h.mem_available, "mem_total_bytes": h.mem_total, "worker_bytes": h.worker_bytes,
            "workers_measured": len(memory),
            "limits": {"cpu_pressure": lim.cpu_pressure, "memory_pressure": lim.memory_pressure,
                       "memory_full_pressure": lim.memory_full_pressure, "memory_reserve_bytes": lim.memory_reserve},
            "unreadable": {part: str(why) for part, why in reading.missing.items()},
            "one_more_worker": verdict.reason or "allowed",
            "agent_holding": held}


def render_json(report: dict[str, Any]) -> str:
    return json.dumps(report, indent=2, sort_keys=False)


"""The status document: `dqagent status --json` and the agent's `/status.json`, built by one function.

`document(view)` turns a `StatusView` (what was observed: settings, queues, units, pauses, the agent's own
state) into the report's dict. `dqagent status` (`dqagent.cli.status`) fills the view from live systemd and
Redis reads; the agent (`dqagent.agent.statusview`) from its latest snapshot. Both call this one function,
so the two documents have the same keys and figures and cannot drift apart.

The top-level keys describe the default pool (the old manager's keys, unchanged) and the host; `pools` has
one entry per pool, the default pool first, each with the keys of `POOL_KEYS`. What a source could not
give is None or empty, with the source's error at the top (`redis_error`, `systemd_error`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from dqagent.core.busy import Load, status_of
from dqagent.core.demand import Demand, QueueDemand
from dqagent.core.guard import Headroom, Limits, decide
from dqagent.core.pause import Pause
from dqagent.core.policies import thresholds
from dqagent.core.prediction import ForecastReport
from dqagent.core.schedule import in_force, local_text, next_change
from dqagent.core.units import UnitState, describe_exit
from dqagent.core.untrusted import Rejection
from dqagent.errors import DqAgentError
from dqagent.settings.config import Settings
from dqagent.settings.parsers import DEFAULT_POOL
from dqagent.settings.pools import Pool
from dqagent.settings.schedule import zone_for
from dqagent.settings.workercmd import WorkerShape, worker_shape

#: The keys each entry of `pools` has; the top level has them too, for the default pool.
POOL_KEYS = ("queue_length", "current_processes", "min_processes", "max_processes", "scale_up_threshold",
             "scale_down_threshold", "process_list", "queues", "queue_metric", "scaling_policy", "max_queue_age_s",
             "worker_shape", "command_error", "failing_workers", "pool_priority", "settings_file", "schedule",
             "pause", "forecast")


@dataclass(frozen=True, slots=True)
class Failure:
    """What is known of a failing worker beyond its unit state: the main process's exit and its last line."""

    exit_code: int = 0
    exit_status: int = 0
    #: The last line the worker logged; None: not read (the agent does not read the journal for a page).
    last_line: str | None = None


@dataclass(frozen=True, slots=True)
class GuardReading:
    """The guard's figures: the host's headroom, the limits, the files that could not be read (part: why),
    and how many workers' memory was measured."""

    headroom: Headroom
    limits: Limits
    unreadable: Mapping[str, str] = field(default_factory=dict)
    measured: int = 0


@dataclass(frozen=True, slots=True)
class PoolView:
    """One pool as observed. `queues` None: the broker was not read; `units` None: systemd was not read."""

    pool: Pool
    queues: tuple[QueueDemand, ...] | None = None
    units: tuple[UnitState, ...] | None = None
    pause: Pause | None = None
    #: Details of failing units, by unit name (a failing unit without an entry shows what its state says).
    failures: Mapping[str, Failure] = field(default_factory=dict)
    #: The running workers' own reports (`dqagent.dramatiq.WorkerReport`), by unit name; None: not read.
    loads: Mapping[str, Load] | None = None
    #: PREDICTIVE: the forecast as the agent last published it (None: off, or not published / not readable).
    forecast: ForecastReport | None = None


@dataclass(frozen=True, slots=True)
class StatusView:
    """Everything the status document shows, as observed at `now_s` (wall-clock seconds)."""

    settings: Settings
    env_file: Path | None
    pools: tuple[PoolView, ...]
    now_s: float
    redis_error: str | None = None
    #: Broker data the read skipped as untrusted (only when the read succeeded).
    rejected: tuple[Rejection, ...] = ()
    systemd_error: str | None = None
    #: dqagent.service's ActiveState ("unknown": not read) and its STATUS= text (None: none).
    agent_state: str = "unknown"
    agent_status_text: str | None = None
    guard: GuardReading | None = None
    #: Worker units of pools no file declares (a pool file removed while its units run): not counted.
    undeclared: tuple[UnitState, ...] = ()
    cpu_count: int | None = None


def document(view: StatusView) -> dict[str, Any]:
    """The status report of `view` (see the module)."""
    s = view.settings
    report = _host(view)
    parts = {p.pool.name: _pool(p, view) for p in view.pools}
    if s.guard and view.guard is not None:
        running = None if view.systemd_error else sum(parts[p.pool.name]["current_processes"] or 0
                                                      for p in view.pools)
        report["guard"] = guard_report(view.guard, running, view.agent_status_text)
    report.update(parts.get(DEFAULT_POOL, {}))
    report["pools"] = parts
    return report


def _host(view: StatusView) -> dict[str, Any]:
    """The host-wide keys (and the default pool's bounds, before its part is merged in)."""
    s = view.settings
    return {
        "queue_length": None, "current_processes": None, "min_processes": s.min_processes,
        "max_processes": s.max_processes, "scale_up_threshold": None, "scale_down_threshold": None,
        "monitoring_active": view.agent_state == "active", "monitor_state": view.agent_state,
        "process_list": [], "queues": {}, "queue_metric": str(s.queue_metric), "scaling_policy": s.scaling_policy,
        "max_queue_age_s": s.max_queue_age_s, "redis": s.redis_location(),
        #: "redis" or "rabbitmq" (RABBITMQ_URL set), and where it is (never a password).
        "broker": s.broker, "broker_location": s.broker_location(),
        #: The file these settings came from; None: no file, defaults (and the environment) only.
        "settings_file": str(view.env_file) if view.env_file is not None else None,
        "redis_error": view.redis_error, "systemd_error": view.systemd_error,
        "worker_shape": None, "command_error": None, "agent_status_text": view.agent_status_text,
        "failing_workers": [], "guard": None,
        #: Broker data the read skipped as untrusted: [{"kind", "key", "reason"}] (dqagent.core.untrusted).
        "broker_data_rejected": [{"kind": r.kind.value, "key": r.key, "reason": r.reason} for r in view.rejected],
        "pool_priority": s.pool_priority,
        #: SCHEDULE now: the windows in force and the next change (`schedule_report`); None: no SCHEDULE.
        "schedule": schedule_report(s, view.now_s * 1e6),
        #: HOST_MAX_PROCESSES: most workers of all pools together; None: no host cap.
        "host_max_processes": s.host_max_processes,
        "undeclared_workers": [{**_process(st), "pool": st.pool} for st in view.undeclared],
        "pools": {},
    }


def _pool(p: PoolView, view: StatusView) -> dict[str, Any]:
    """One pool's part (`POOL_KEYS`)."""
    s = p.pool.settings
    file = p.pool.path if p.pool.path is not None else view.env_file
    part: dict[str, Any] = {
        "queue_length": None, "current_processes": None, "min_processes": s.min_processes,
        "max_processes": s.max_processes, "scale_up_threshold": None, "scale_down_threshold": None,
        "process_list": [], "queues": {}, "queue_metric": str(s.queue_metric), "scaling_policy": s.scaling_policy,
        "max_queue_age_s": s.max_queue_age_s, "worker_shape": None, "command_error": None, "failing_workers": [],
        "pool_priority": s.pool_priority, "settings_file": str(file) if file is not None else None,
        "schedule": schedule_report(s, view.now_s * 1e6),
        #: `dqagent pause`: {"by", "uid", "since", "until" (None: until resumed), "reason", "at", "status"}.
        "pause": _pause(p.pause, view.now_s),
        #: PREDICTIVE: {"mode", "state" (off, trusted, aside, unknown), "why", "error_recent", "error_day",
        #: "period_s", "floor", "would", "as_of"} (`forecast_report`).
        "forecast": forecast_report(s, p.forecast),
    }
    shape = _shape(part, s, view.cpu_count)
    if p.queues is not None:
        part["queue_length"] = Demand(p.queues).queue_length(s.queue_metric)
        part["queues"] = {q.queue: {"ready": q.ready, "in_flight": q.in_flight, "delayed": q.delayed,
                                    "dead_lettered": q.dead, "orphaned": q.orphaned, "oldest_age_s": q.oldest_age_s,
                                    # RabbitMQ only: its consumers, and whether in flight is an estimate.
                                    **({"consumers": q.consumers, "in_flight_known": q.in_flight_known}
                                       if q.consumers is not None else {})}
                          for q in p.queues}
    if p.units is not None:
        n = sum(1 for st in p.units if st.running)
        part["current_processes"] = n
        if shape is not None:
            part["scale_up_threshold"], part["scale_down_threshold"] = thresholds(s, n, shape)
        part["failing_workers"] = [_failure(st, p.failures.get(st.unit, Failure(st.exec_main_code,
                                                                                  st.exec_main_status)))
                                   for st in p.units if st.crashed_since_start]
        part["process_list"] = [_process(st) for st in p.units]
        if p.loads is not None:  # what each worker runs and holds, by its own report (None: no report)
            for w, st in zip(part["process_list"], p.units, strict=True):
                w["report"] = status_of(p.loads.get(st.unit), view.now_s, s.worker_hung_after_s)
    return part


def _shape(part: dict[str, Any], s: Settings, cpu_count: int | None) -> WorkerShape | None:
    """DRAMATIQ_COMMAND's shape into `part`; None if Dramatiq's parser rejects the command."""
    try:
        shape = worker_shape(s.dramatiq_command, cpu_count)
    except DqAgentError as exc:
        part["command_error"] = str(exc)
        return None
    part["worker_shape"] = {"processes": shape.processes, "threads": shape.threads,
                            "queues": list(shape.queues) if shape.queues else None,
                            "is_dramatiq": shape.is_dramatiq}
    return shape


def iso(seconds: float | None) -> str | None:
    """Wall-clock seconds as ISO 8601 UTC to the second; None for None or 0 (never)."""
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="seconds") if seconds else None


def _process(st: UnitState) -> dict[str, Any]:
    """One unit as `process_list` shows it."""
    return {"unit": st.unit, "pid": st.main_pid or None, "start_time": iso(st.active_enter_us / 1e6),
            "status": st.sub_state if st.running else f"{st.active_state}/{st.sub_state}",
            "result": st.result, "restarts": st.n_restarts}


def _failure(st: UnitState, f: Failure) -> dict[str, Any]:
    """A failing unit: systemd's result and exit, and the last line it logged (None: not read)."""
    return {"unit": st.unit, "state": f"{st.active_state}/{st.sub_state}", "result": st.result,
            "restarts": st.n_restarts, "exit_code": f.exit_code or None,
            "exit_status": f.exit_status if f.exit_code else None,
            "exit": describe_exit(f.exit_code, f.exit_status), "last_line": f.last_line,
            "more": f"journalctl -u {st.unit}"}


def _pause(p: Pause | None, now_s: float) -> dict[str, Any] | None:
    """A pool's pause in force at `now_s`; None when none is."""
    if p is None or not p.active_at(now_s):
        return None
    return {"by": p.user, "uid": p.uid, "since": iso(p.since_s), "until": iso(p.until_s),
            "reason": p.reason, "at": p.at, "status": p.status(now_s)}


def forecast_report(s: Settings, r: ForecastReport | None) -> dict[str, Any]:
    """PREDICTIVE as the agent last published it. Without a report (the agent has not checked or saved yet, or
    this user cannot read its state), the mode from the settings and state "unknown", saying why."""
    if s.predictive == "off":
        return {"mode": "off", "state": "off", "why": None, "error_recent": None, "error_day": None,
                "period_s": None, "floor": None, "would": None, "as_of": None}
    if r is None:
        return {"mode": s.predictive, "state": "unknown",
                "why": "the agent's forecast is not readable yet (it publishes it after a check and saves it at "
                       "most 5 min apart)", "error_recent": None, "error_day": None, "period_s": None,
                "floor": None, "would": None, "as_of": None}
    return {"mode": str(r.mode), "state": "trusted" if r.trusted else "aside", "why": r.why or None,
            "error_recent": r.error_recent, "error_day": r.error_day, "period_s": r.period_s, "floor": r.floor,
            "would": r.would, "as_of": iso(r.at_s)}


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
        "at": iso(change[0] / 1e6), "local": local_text(change[0], zone), "windows": list(change[1].windows),
        "warming": list(change[1].warming), "floor": change[1].floor, "ceiling": change[1].ceiling}
    return {"timezone": s.schedule_timezone or str(zone), "entries": [w.text for w in s.schedule.windows],
            "windows": list(now.windows), "warming": list(now.warming), "floor": now.floor, "ceiling": now.ceiling,
            "next_change": nxt}


def guard_report(g: GuardReading, workers: int | None, agent_status: str | None) -> dict[str, Any]:
    """The guard's figures, and whether it would let one more worker start now."""
    h, lim = g.headroom, g.limits
    pool = workers or 0
    verdict = decide(pool, pool + 1, 0, h, lim)
    held = next((part.strip() for part in (agent_status or "").split(";") if part.strip().startswith("guard:")), None)
    return {"cpu_some_avg10": h.cpu_some, "memory_some_avg10": h.memory_some, "memory_full_avg10": h.memory_full,
            "mem_available_bytes": h.mem_available, "mem_total_bytes": h.mem_total, "worker_bytes": h.worker_bytes,
            "workers_measured": g.measured,
            "limits": {"cpu_pressure": lim.cpu_pressure, "memory_pressure": lim.memory_pressure,
                       "memory_full_pressure": lim.memory_full_pressure, "memory_reserve_bytes": lim.memory_reserve},
            "unreadable": dict(g.unreadable),
            "one_more_worker": verdict.reason or "allowed",
            "agent_holding": held}

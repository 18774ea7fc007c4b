"""`dqagent status`: a report built from live systemd and Redis state, for any user.

Whatever cannot be read (Redis down, a credential the user may not read, no system bus) is
reported as unavailable in the output, never as a traceback. `--json` keeps the old manager's
keys (`queue_length`, `current_processes`, ... `process_list`) so existing scripts keep working.

For a failing worker (`UnitState.crashed_since_start`: failed, waiting to be restarted after a crash,
or restarted by systemd since its last start) it adds systemd's `Result`, the main process's exit and
the last line the worker logged (from the journal, when this user may read it; otherwise the
`journalctl` command that shows more), and it shows the agent's own `STATUS=` text.
"""

from __future__ import annotations

import contextlib
import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from dqagent.broker.redis import RedisDemandProbe
from dqagent.core.policies import thresholds
from dqagent.core.units import AGENT_UNIT, UnitState, describe_exit
from dqagent.errors import DqAgentError
from dqagent.report import journal
from dqagent.report.terminal import printable_tree
from dqagent.settings.config import Settings
from dqagent.settings.sources import Loaded, describe_source
from dqagent.settings.workercmd import WorkerShape, worker_shape
from dqagent.systemd.client import SystemdClient


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


async def collect(loaded: Loaded, bus_address: str | None) -> dict[str, Any]:
    """Read everything the report shows; each source fails on its own."""
    s = loaded.settings
    report = _blank(loaded)
    shape = _read_shape(report, s)
    await _read_broker(report, loaded)
    memory = await _read_systemd(report, s, shape, bus_address)
    if s.guard:
        report["guard"] = guard_report(s, memory, report["current_processes"], report["agent_status_text"])
    return report


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
    }


def _read_shape(report: dict[str, Any], s: Settings) -> WorkerShape | None:
    """DRAMATIQ_COMMAND's shape into `report`; None if Dramatiq's parser rejects the command."""
    try:
        shape = worker_shape(s.dramatiq_command, os.cpu_count())
    except DqAgentError as exc:
        report["command_error"] = str(exc)
        return None
    report["worker_shape"] = {"processes": shape.processes, "threads": shape.threads,
                              "queues": list(shape.queues) if shape.queues else None,
                              "is_dramatiq": shape.is_dramatiq}
    return shape


async def _read_broker(report: dict[str, Any], loaded: Loaded) -> None:
    """The queues into `report`, or `redis_error`."""
    s = loaded.settings
    probe = RedisDemandProbe(s)
    try:
        demand = await probe.fetch_demand()
    except DqAgentError as exc:
        report["redis_error"] = str(exc) + (f"; {loaded.password_note}" if loaded.password_note else "")
    except Exception as exc:  # data no check caught, or a bug: a line in the report, never a traceback
        detail = " ".join(str(exc).split())[:200]
        report["redis_error"] = f"unexpected {type(exc).__name__} reading the broker: {detail}"
    else:
        report["broker_data_rejected"] = [{"kind": r.kind.value, "key": r.key, "reason": r.reason}
                                          for r in demand.rejected]
        report["queue_length"] = demand.queue_length(s.queue_metric)
        report["queues"] = {q.queue: {"ready": q.ready, "in_flight": q.in_flight, "delayed": q.delayed,
                                      "dead_lettered": q.dead, "orphaned": q.orphaned,
                                      "oldest_age_s": q.oldest_age_s}
                            for q in demand.queues}
    finally:
        await probe.close()


async def _read_systemd(report: dict[str, Any], s: Settings, shape: WorkerShape | None,
                        bus_address: str | None) -> list[int]:
    """The workers and the agent's unit into `report`, or `systemd_error`; returns the running workers'
    MemoryCurrent (for the guard's figures; read only with GUARD on)."""
    client = SystemdClient(bus_address, call_timeout_s=s.dbus_timeout_s)
    memory: list[int] = []
    try:
        await client.connect()
        states = await client.worker_states()
        agent_state = str(await client.unit_property(AGENT_UNIT, "Unit", "ActiveState"))
    except DqAgentError as exc:
        report["systemd_error"] = str(exc)
    else:
        n = sum(1 for st in states if st.running)
        report["current_processes"] = n
        if shape is not None:
            report["scale_up_threshold"], report["scale_down_threshold"] = thresholds(s, n, shape)
        report["monitor_state"] = agent_state
        report["monitoring_active"] = agent_state == "active"
        with contextlib.suppress(DqAgentError):  # not installed: no Service interface to read
            report["agent_status_text"] = str(await client.unit_property(AGENT_UNIT, "Service", "StatusText"))
        # Read one by one: failing units are few, and this stays far below the bus's pending-reply limit.
        report["failing_workers"] = [await _failure(client, st) for st in states if st.crashed_since_start]
        report["process_list"] = [
            {"unit": st.unit, "pid": st.main_pid or None, "start_time": _iso(st.active_enter_us),
             "status": st.sub_state if st.running else f"{st.active_state}/{st.sub_state}",
             "result": st.result, "restarts": st.n_restarts}
            for st in states
        ]
        if s.guard:
            with contextlib.suppress(DqAgentError):
                memory = await client.worker_memory()
    finally:
        client.close()
    return memory


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


def render_text(report: dict[str, Any]) -> str:
    """The report for a terminal: every string in it (unit, queue and host names, errors, the workers' last
    lines) passes through `terminal.printable`, so no control character from outside reaches the screen."""
    r: dict[str, Any] = printable_tree(report)

    def show(v: Any) -> str:
        return "unavailable" if v is None else f"{v:g}" if isinstance(v, float) else str(v)

    lines = ["=== dqagent status ==="]
    file = r.get("settings_file")
    lines.append(f"settings: {describe_source(None if file is None else Path(file))}")
    lines.append(f"queue length ({r['queue_metric']}): {show(r['queue_length'])}"
                 + (f"   [redis unavailable: {r['redis_error']}]" if r["redis_error"] else ""))
    for name, q in r["queues"].items():
        age = q.get("oldest_age_s")
        lines.append(f"  {name}: ready {q['ready']}, in flight {q['in_flight']}, delayed {q['delayed']}, "
                     f"dead-lettered {q['dead_lettered']}, orphaned {q['orphaned']}, "
                     + ("nothing waiting" if age is None else f"oldest waiting {age:.1f}s")
                     + (f" (MAX_QUEUE_AGE {r['max_queue_age_s']:g}s)" if r.get("max_queue_age_s") else ""))
    for rej in r.get("broker_data_rejected", []):
        lines.append(f"  skipped untrusted broker data: {rej['kind']} {rej['key']}: {rej['reason']}")
    lines.append(f"current workers: {show(r['current_processes'])}")
    lines.append(f"range: {r['min_processes']} - {r['max_processes']}")
    shape = r["worker_shape"]
    if shape and shape["is_dramatiq"]:
        lines.append(f"each worker: {shape['processes']} processes x {shape['threads']} threads"
                     + (f", queues {','.join(shape['queues'])}" if shape["queues"] else ""))
    if r["command_error"]:
        lines.append(f"worker command: {r['command_error']}")
    lines.append(f"scale-up threshold ({r['scaling_policy']} policy): {show(r['scale_up_threshold'])}")
    lines.append(f"scale-down threshold: {show(r['scale_down_threshold'])}")
    lines.append(f"agent (dqagent.service): {r['monitor_state']}"
                 + (f": {r['agent_status_text']}" if r["agent_status_text"] else "")
                 + (f"   [systemd unavailable: {r['systemd_error']}]" if r["systemd_error"] else ""))
    if r.get("guard"):
        lines += _guard_lines(r["guard"])
    if r["process_list"]:
        lines.append("workers:")
        for p in r["process_list"]:
            lines.append(f"  {p['unit']}  pid {show(p['pid'])}  since {show(p['start_time'])}  {p['status']}")
    if r["failing_workers"]:
        lines.append("failing workers:")
        for f in r["failing_workers"]:
            why = ", ".join(x for x in (f"result {f['result']}", f["exit"], f"{f['restarts']} restarts") if x)
            lines.append(f"  {f['unit']}  {f['state']}  {why}")
            if f["last_line"]:
                lines.append(f"    last logged: {f['last_line']}")
                lines.append(f"    more: {f['more']}")
            else:
                lines.append(f"    no log line readable by this user; as root or a member of systemd-journal "
                             f"or adm: {f['more']}")
    lines.append("======================")
    return "\n".join(lines)


def _guard_lines(g: dict[str, Any]) -> list[str]:
    def pct(x: float | None) -> str:
        return "unreadable" if x is None else f"{x:g}%"

    def size(n: int | None) -> str:
        return "unknown" if n is None else f"{n / 1024**2:.0f} MiB"

    lim = g["limits"]
    lines = [f"guard: cpu some {pct(g['cpu_some_avg10'])} (limit {lim['cpu_pressure']:g}%), memory some "
             f"{pct(g['memory_some_avg10'])} / full {pct(g['memory_full_avg10'])} "
             f"(limits {lim['memory_pressure']:g}% / {lim['memory_full_pressure']:g}%)",
             f"  MemAvailable {size(g['mem_available_bytes'])} (reserve {size(lim['memory_reserve_bytes'])}), "
             f"one worker {size(g['worker_bytes'])} (p90 of {g['workers_measured']} measured)",
             f"  one more worker now: {g['one_more_worker']}"
             + (f"; the agent: {g['agent_holding']}" if g["agent_holding"] else "")]
    lines += [f"  unreadable: {why}" for why in g["unreadable"].values()]
    return lines

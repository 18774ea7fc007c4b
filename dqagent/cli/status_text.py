"""`dqagent status` for a terminal: the report of `dqagent.cli.status.collect` as text.

One pool: exactly the text of before pools. Several pools: the host's lines (settings, the agent, the
guard, HOST_MAX_PROCESSES), then one block per pool. Worker units of a pool no file declares are listed
in a note at the end, never counted in a pool.

Every string in the report (unit, queue and host names, errors, the workers' last lines) passes through
`terminal.printable`, so no control character from outside reaches the screen.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dqagent.core.busy import status_text
from dqagent.report.terminal import printable_tree
from dqagent.settings.sources import describe_source

RULE = "======================"


def show(v: Any) -> str:
    return "unavailable" if v is None else f"{v:g}" if isinstance(v, float) else str(v)


def render_text(report: dict[str, Any]) -> str:
    """The report for a terminal (see the module)."""
    r: dict[str, Any] = printable_tree(report)
    pools: dict[str, Any] = r.get("pools") or {}
    if len(pools) > 1:
        return "\n".join([*_host_lines(r, pools), *_undeclared_lines(r), RULE])
    file = r.get("settings_file")
    lines = ["=== dqagent status ===", f"settings: {describe_source(None if file is None else Path(file))}"]
    lines += _demand_lines(r, r["redis_error"], r.get("broker_data_rejected", []))
    lines += _shape_lines(r)
    lines.append(_agent_line(r))
    lines += _pause_lines(r)
    if r.get("guard"):
        lines += _guard_lines(r["guard"])
    lines += _worker_lines(r)
    lines += _undeclared_lines(r)
    lines.append(RULE)
    return "\n".join(lines)


def _host_lines(r: dict[str, Any], pools: dict[str, Any]) -> list[str]:
    """Several pools: the host's lines, then a block per pool."""
    file = r.get("settings_file")
    running = [p["current_processes"] for p in pools.values()]
    cap = r.get("host_max_processes")
    lines = ["=== dqagent status ===", f"settings: {describe_source(None if file is None else Path(file))}",
             f"pools: {len(pools)} ({', '.join(pools)}), workers running: "
             + (show(None) if None in running else str(sum(running)))
             + f", host max: {'no cap' if cap is None else cap}"]
    if r["redis_error"]:
        lines.append(f"{r.get('broker', 'redis')} unavailable: {r['redis_error']}")
    lines += [f"skipped untrusted broker data: {rej['kind']} {rej['key']}: {rej['reason']}"
              for rej in r.get("broker_data_rejected", [])]
    lines.append(_agent_line(r))
    if r.get("guard"):
        lines += _guard_lines(r["guard"])
    for name, p in pools.items():
        lines.append(f"--- pool {name} ({show(p.get('settings_file'))}), priority {p.get('pool_priority', 0)} ---")
        lines += _demand_lines(p, None, [])
        lines += _shape_lines(p)
        lines += _pause_lines(p)
        lines += _worker_lines(p)
    return lines


def _pause_lines(p: dict[str, Any]) -> list[str]:
    """`dqagent pause`: who, since, until, why (the pool's workers are held: docs/operations.md)."""
    pause = p.get("pause")
    if not pause:
        return []
    until = pause["until"] or "resumed"
    return [f"{pause['status']} (since {pause['since']}, until {until}; dqagent resume ends it)"]


def _agent_line(r: dict[str, Any]) -> str:
    return (f"agent (dqagent.service): {r['monitor_state']}"
            + (f": {r['agent_status_text']}" if r["agent_status_text"] else "")
            + (f"   [systemd unavailable: {r['systemd_error']}]" if r["systemd_error"] else ""))


def _demand_lines(p: dict[str, Any], redis_error: str | None, rejected: list[dict[str, str]]) -> list[str]:
    """The queue length and each queue of one pool."""
    lines = [f"queue length ({p['queue_metric']}): {show(p['queue_length'])}"
             + (f"   [{p.get('broker', 'redis')} unavailable: {redis_error}]" if redis_error else "")]
    for name, q in p["queues"].items():
        age = q.get("oldest_age_s")
        if "consumers" in q:  # RabbitMQ: consumers, no orphans, the age never known
            lines.append(f"  {name}: ready {q['ready']}, in flight {q['in_flight']}"
                         + ("" if q["in_flight_known"] else " (estimated: consumers x prefetch, README \"Brokers\")")
                         + f", delayed {q['delayed']}, dead-lettered {q['dead_lettered']}, "
                         f"consumers {q['consumers']}, oldest waiting unknown (RabbitMQ)")
            continue
        lines.append(f"  {name}: ready {q['ready']}, in flight {q['in_flight']}, delayed {q['delayed']}, "
                     f"dead-lettered {q['dead_lettered']}, orphaned {q['orphaned']}, "
                     + ("nothing waiting" if age is None else f"oldest waiting {age:.1f}s")
                     + (f" (MAX_QUEUE_AGE {p['max_queue_age_s']:g}s)" if p.get("max_queue_age_s") else ""))
    lines += [f"  skipped untrusted broker data: {rej['kind']} {rej['key']}: {rej['reason']}" for rej in rejected]
    return lines


def _shape_lines(p: dict[str, Any]) -> list[str]:
    """One pool's count, range, worker shape and thresholds."""
    lines = [f"current workers: {show(p['current_processes'])}", f"range: {p['min_processes']} - {p['max_processes']}"]
    shape = p["worker_shape"]
    if shape and shape["is_dramatiq"]:
        lines.append(f"each worker: {shape['processes']} processes x {shape['threads']} threads"
                     + (f", queues {','.join(shape['queues'])}" if shape["queues"] else ""))
    if p["command_error"]:
        lines.append(f"worker command: {p['command_error']}")
    lines.append(f"scale-up threshold ({p['scaling_policy']} policy): {show(p['scale_up_threshold'])}")
    lines.append(f"scale-down threshold: {show(p['scale_down_threshold'])}")
    return lines + _schedule_lines(p.get("schedule")) + _forecast_lines(p.get("forecast"))


def _forecast_lines(f: dict[str, Any] | None) -> list[str]:
    """PREDICTIVE: its mode, whether it is trusted (else why not), its error, the period found, its floor."""
    if not f or f["mode"] == "off":
        return []
    if f["state"] == "unknown":
        return [f"forecast (PREDICTIVE={f['mode']}): unknown: {f['why']}"]

    def pct(x: float | None) -> str:
        return "unknown" if x is None else f"{x:.0%}"
    state = "trusted" if f["state"] == "trusted" else f"stepped aside ({f['why']})"
    period = f"period {f['period_s']:g}s" if f["period_s"] is not None else "no short period"
    return [f"forecast (PREDICTIVE={f['mode']}): {state}; error {pct(f['error_recent'])} recent, "
            f"{pct(f['error_day'])} over the last day; {period}; floor {f['floor']} (as of {f['as_of']})"]


def _schedule_lines(sch: dict[str, Any] | None) -> list[str]:
    """SCHEDULE: the windows in force with their bounds, and the next change."""
    if not sch:
        return []

    def state(x: dict[str, Any]) -> str:
        bounds = " ".join(f"{k}={x[b]}" for k, b in (("min", "floor"), ("max", "ceiling")) if x[b] is not None)
        names = [*x["windows"], *(f"{w} (pre-warming)" for w in x["warming"])]
        return f"{' + '.join(names)} ({bounds})" if names else "no window"

    nxt = sch["next_change"]
    return [f"schedule ({sch['timezone']}): {state(sch)}",
            f"  next change: {nxt['local']}: {state(nxt)}" if nxt else "  next change: none"]


def _worker_lines(p: dict[str, Any]) -> list[str]:
    """One pool's units, then its failing ones with why."""
    lines: list[str] = []
    if p["process_list"]:
        lines.append("workers:")
        for w in p["process_list"]:
            load = status_text(w.get("report"))
            lines.append(f"  {w['unit']}  pid {show(w['pid'])}  since {show(w['start_time'])}  {w['status']}"
                         + (f"  {load}" if load else ""))
    if p["failing_workers"]:
        lines.append("failing workers:")
        for f in p["failing_workers"]:
            why = ", ".join(x for x in (f"result {f['result']}", f["exit"], f"{f['restarts']} restarts") if x)
            lines.append(f"  {f['unit']}  {f['state']}  {why}")
            if f["last_line"]:
                lines.append(f"    last logged: {f['last_line']}")
                lines.append(f"    more: {f['more']}")
            else:
                lines.append(f"    no log line readable by this user; as root or a member of systemd-journal "
                             f"or adm: {f['more']}")
    return lines


def _undeclared_lines(r: dict[str, Any]) -> list[str]:
    """Units of pools no file declares (not counted anywhere)."""
    units = r.get("undeclared_workers") or []
    if not units:
        return []
    names = sorted({u["pool"] for u in units})
    lines = [f"undeclared pools ({', '.join(names)}): {len(units)} worker units of a pool no file declares, "
             "not counted (stop them with systemctl, or restore the pool file):"]
    lines += [f"  {u['unit']}  pid {show(u['pid'])}  {u['status']}" for u in units]
    return lines


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

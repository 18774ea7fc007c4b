"""`dqagent status`: a report built from live systemd and Redis state, for any user.

Whatever cannot be read (Redis down, a credential the user may not read, no system bus) is
reported as unavailable in the output, never as a traceback. `--json` keeps the old manager's
keys (`queue_length`, `current_processes`, ... `process_list`) so existing scripts keep working.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from dqagent.demand import RedisDemandProbe
from dqagent.errors import DqAgentError
from dqagent.policies import thresholds
from dqagent.sources import Loaded, describe_source
from dqagent.systemd import AGENT_UNIT, SystemdClient


def _iso(us: int) -> str | None:
    return datetime.fromtimestamp(us / 1e6, UTC).isoformat(timespec="seconds") if us else None


async def collect(loaded: Loaded, bus_address: str | None) -> dict[str, Any]:
    """Read everything the report shows; each source fails on its own."""
    s = loaded.settings
    report: dict[str, Any] = {
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
        "redis": s.redis_location(),
        #: The file these settings came from; None: no file, defaults (and the environment) only.
        "settings_file": str(loaded.env_file) if loaded.env_file is not None else None,
        "redis_error": None,
        "systemd_error": None,
    }
    probe = RedisDemandProbe(s)
    try:
        demand = await probe.fetch_demand()
    except DqAgentError as exc:
        report["redis_error"] = str(exc) + (f"; {loaded.password_note}" if loaded.password_note else "")
    else:
        report["queue_length"] = demand.queue_length(s.queue_metric)
        report["queues"] = {q.queue: {"ready": q.ready, "in_flight": q.in_flight, "delayed": q.delayed,
                                      "dead_lettered": q.dead, "orphaned": q.orphaned}
                            for q in demand.queues}
    finally:
        await probe.close()
    client = SystemdClient(bus_address)
    try:
        await client.connect()
        states = await client.worker_states()
        agent_state = str(await client.unit_property(AGENT_UNIT, "Unit", "ActiveState"))
    except DqAgentError as exc:
        report["systemd_error"] = str(exc)
    else:
        running = [st for st in states if st.running]
        n = len(running)
        report["current_processes"] = n
        report["scale_up_threshold"], report["scale_down_threshold"] = thresholds(s, n)
        report["monitor_state"] = agent_state
        report["monitoring_active"] = agent_state == "active"
        report["process_list"] = [
            {"unit": st.unit, "pid": st.main_pid or None, "start_time": _iso(st.active_enter_us),
             "status": st.sub_state if st.running else f"{st.active_state}/{st.sub_state}",
             "result": st.result, "restarts": st.n_restarts}
            for st in states
        ]
    finally:
        client.close()
    return report


def render_json(report: dict[str, Any]) -> str:
    return json.dumps(report, indent=2, sort_keys=False)


def render_text(r: dict[str, Any]) -> str:
    def show(v: Any) -> str:
        return "unavailable" if v is None else f"{v:g}" if isinstance(v, float) else str(v)

    lines = ["=== dqagent status ==="]
    file = r.get("settings_file")
    lines.append(f"settings: {describe_source(None if file is None else Path(file))}")
    lines.append(f"queue length ({r['queue_metric']}): {show(r['queue_length'])}"
                 + (f"   [redis unavailable: {r['redis_error']}]" if r["redis_error"] else ""))
    for name, q in r["queues"].items():
        lines.append(f"  {name}: ready {q['ready']}, in flight {q['in_flight']}, delayed {q['delayed']}, "
                     f"dead-lettered {q['dead_lettered']}, orphaned {q['orphaned']}")
    lines.append(f"current workers: {show(r['current_processes'])}")
    lines.append(f"range: {r['min_processes']} - {r['max_processes']}")
    lines.append(f"scale-up threshold ({r['scaling_policy']} policy): {show(r['scale_up_threshold'])}")
    lines.append(f"scale-down threshold: {show(r['scale_down_threshold'])}")
    lines.append(f"agent (dqagent.service): {r['monitor_state']}"
                 + (f"   [systemd unavailable: {r['systemd_error']}]" if r["systemd_error"] else ""))
    if r["process_list"]:
        lines.append("workers:")
        for p in r["process_list"]:
            lines.append(f"  {p['unit']}  pid {show(p['pid'])}  since {show(p['start_time'])}  {p['status']}")
    lines.append("======================")
    return "\n".join(lines)

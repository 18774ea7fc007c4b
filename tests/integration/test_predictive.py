"""PREDICTIVE in the real-systemd bench with real Redis and cheap `/bin/sleep` workers, on the real clock.

One agent, a burst of 40 messages every 60 s (the test sets the backlog and clears it 8 s later, as
test_schedule.py does: the forecaster learns the outstanding count, no consumer is needed), TARGET_PER_WORKER=10
so a burst asks for MAX_PROCESSES=4, SCALE_DOWN_WINDOW=0 so the pool goes back to 1 in each gap:

- PREDICTIVE=on: bursts 2 and 3 find 1 worker (the reactive policy starts the others when they come); before
  the 4th, the forecast has found the period and starts the 4 workers a measured start-up ahead: they are active
  (ActiveEnterTimestamp) before the burst is pushed, the scale-up's reason is the forecast.
- Then `systemctl restart dqagent` with PREDICTIVE=shadow: the learning is read back from its state file under
  the hardened unit's StateDirectory (`forecast_restored`), nothing starts before the 5th burst, but the journal
  shows what would have been started (`forecast_would`), and `dqagent status --json` the forecast's state.
About 4.5 minutes (five periods, the install, the restart).
"""

from __future__ import annotations

import json
import math
import time
from typing import Any

from testbed.agent import dqagent, install, journal, running_workers, set_backlog
from testbed.nspawn import Container
from testbed.redis import RedisServer
from testbed.wait import wait_until

PERIOD = 60.0
BURST = 40
STATE = "/var/lib/dqagent/agent/forecast-default.json"
SETTINGS: dict[str, Any] = dict(MIN_PROCESSES=1, MAX_PROCESSES=4, SCALING_POLICY="target", TARGET_PER_WORKER=10,
                                DEMAND_POLL_INTERVAL=1, CHECK_INTERVAL=2, SCALE_DOWN_WINDOW=0,
                                PROCESS_STARTUP_DELAY=2)


def active_since(c: Container, unit: str) -> float:
    out = c.systemctl("show", unit, "-p", "ActiveEnterTimestamp", "--value", "--timestamp=unix").stdout.strip()
    return float(out.lstrip("@"))


def at(c: Container, redis: RedisServer, push_s: float) -> list[str]:
    """Wait for `push_s`, list the running workers just before it, push the burst; clear it 8 s later."""
    time.sleep(max(0.0, push_s - 0.7 - time.time()))
    before = running_workers(c)
    time.sleep(max(0.0, push_s - time.time()))
    set_backlog(redis, BURST)
    time.sleep(8)
    set_backlog(redis, 0)
    return before


def since(records: list[dict[str, Any]], start_s: float) -> list[dict[str, Any]]:
    return [r for r in records if int(r["__REALTIME_TIMESTAMP"]) / 1e6 >= start_s]


def test_on_pre_warms_the_fourth_burst_and_shadow_after_a_restart_only_says_so(fresh_container: Container,
                                                                                redis_server: RedisServer) -> None:
    c, redis = fresh_container, redis_server
    install(c, redis, PREDICTIVE="on", **SETTINGS)
    wait_until("the agent's first decision", lambda: journal(c, "dqagent", "DQAGENT_EVENT=decision"), timeout=60)
    wait_until("the pool at its MIN", lambda: len(running_workers(c)) == 1, timeout=30)
    # Bursts 5 s into a 10-s bucket of the wall clock, the first at least 15 s after the agent's first read
    first = (math.floor((time.time() + 15) / 10) + 1) * 10 + 5
    pushes = [first + k * PERIOD for k in range(5)]
    seen = [at(c, redis, pushes[k]) for k in range(3)]
    assert [len(s) for s in seen[1:]] == [1, 1], seen  # not learnt yet: nothing early
    # The 4th burst: its workers were started before it came, by the forecast
    before = at(c, redis, pushes[3])
    assert len(before) == 4, before
    started = sorted(active_since(c, u) for u in before[1:])
    assert pushes[2] + 20 < started[0] and started[-1] < pushes[3], (started, pushes[3])
    ups = since(journal(c, "dqagent", "DQAGENT_EVENT=scale_up"), pushes[2] + 20)
    assert ups and "pre-warm" in ups[0]["MESSAGE"], [u["MESSAGE"] for u in ups]
    lines = since(journal(c, "dqagent", "DQAGENT_EVENT=decision"), pushes[3] - 15)
    assert any(r.get("FORECAST_MODE") == "on" and r.get("FORECAST_WOULD") == "4" for r in lines), lines[-3:]
    trusted = journal(c, "dqagent", "DQAGENT_EVENT=forecast_trusted")
    assert trusted and int(trusted[0]["__REALTIME_TIMESTAMP"]) / 1e6 < pushes[3], trusted

    # A restart in shadow mode: the learning is read back, nothing starts early, the journal says what would have
    env = c.run(["cat", "/etc/dqagent/dqagent.env"]).stdout.replace("PREDICTIVE=on", "PREDICTIVE=shadow")
    c.write("/etc/dqagent/dqagent.env", env)
    restarted = time.time()
    c.systemctl("restart", "dqagent")
    wait_until("the pool back at 1", lambda: len(running_workers(c)) == 1, timeout=40)
    assert time.time() < pushes[4] - 15, f"the restart took too long: {pushes[4] - time.time():.0f} s left"
    assert since(journal(c, "dqagent", "DQAGENT_EVENT=forecast_restored"), restarted)
    mode = c.run(["stat", "-c", "%a %U", STATE]).stdout.split()
    assert mode == ["644", "dqagent"], mode
    before = at(c, redis, pushes[4])
    assert len(before) == 1, before  # shadow: nothing early
    would = [r for r in since(journal(c, "dqagent", "DQAGENT_EVENT=forecast_would"), restarted)
             if int(r["__REALTIME_TIMESTAMP"]) / 1e6 < pushes[4]]
    assert would and would[-1]["FORECAST_WOULD"] == "4", would
    assert not since(journal(c, "dqagent", "DQAGENT_EVENT=forecast_state_damaged"), 0)
    report = json.loads(dqagent(c, "status", "--json").stdout)["forecast"]
    assert (report["mode"], report["period_s"]) == ("shadow", PERIOD), report
    assert report["state"] in ("trusted", "aside") and report["as_of"], report

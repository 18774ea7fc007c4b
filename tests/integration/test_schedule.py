"""SCHEDULE in the real-systemd bench with real Redis and cheap `/bin/sleep` workers, on the real clock.

One agent, one schedule, in the container's own zone (SCHEDULE_TIMEZONE empty): a window with a ceiling of 2 in
force from the start, and a window with a floor of 3 that opens at the first whole minute at least 75 s after the
test starts (SCHEDULE has minutes, so that is 75-135 s: the shortest wait that leaves the ceiling's phase and the
install room before it; the test takes about 2 minutes).

- A burst (set_backlog) while the ceiling is in force: the pool grows to 2, never to the MAX of 4; the decision
  line names the schedule, STATUS= and `dqagent status` (text and --json) the window and the next change,
  /metrics the ceiling; the journal logs the transitions (`schedule_changed`).
- The floor's window: its workers are started before it opens (the pre-warm: PROCESS_STARTUP_DELAY plus the
  measured start time), so they run when it opens; 10 s before, the pool is still at its MIN.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.request

from testbed.agent import dqagent, install, journal, running_workers, set_backlog
from testbed.nspawn import Container
from testbed.redis import RedisServer, free_port
from testbed.wait import wait_until


def hhmm(c: Container, epoch_s: float) -> str:
    """The container's clock at `epoch_s` (its own zone)."""
    return c.run(["date", "-d", f"@{int(epoch_s)}", "+%H:%M"]).stdout.strip()


def active_since(c: Container, unit: str) -> float:
    """A unit's ActiveEnterTimestamp, epoch seconds."""
    out = c.systemctl("show", unit, "-p", "ActiveEnterTimestamp", "--value", "--timestamp=unix").stdout.strip()
    return float(out.lstrip("@"))


def test_a_ceiling_caps_a_burst_and_a_floor_is_pre_warmed(fresh_container: Container,
                                                          redis_server: RedisServer) -> None:
    c, port = fresh_container, free_port()
    opens = (int(time.time() + 75) // 60 + 1) * 60  # a whole minute, 75-135 s away
    ceiling_from = hhmm(c, time.time() - 60)
    schedule = (f"* {ceiling_from}-{hhmm(c, opens)} max=2; "
                f"* {hhmm(c, opens)}-{hhmm(c, opens + 600)} min=3")
    install(c, redis_server, MIN_PROCESSES=1, MAX_PROCESSES=4, SCHEDULE=schedule, SCALING_POLICY="target",
            TARGET_PER_WORKER=10, DEMAND_POLL_INTERVAL=1, SCALE_DOWN_WINDOW=0, CHECK_INTERVAL=60,
            PROCESS_STARTUP_DELAY=2, METRICS_ADDRESS=f"127.0.0.1:{port}")
    wait_until("the pool at its MIN", lambda: len(running_workers(c)) == 1, timeout=60)
    seen: list[int] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            seen.append(len(running_workers(c)))
            time.sleep(0.3)

    # When a burst arrives while the ceiling's window is in force (the policy wants MAX_PROCESSES=4)
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        set_backlog(redis_server, 200)
        wait_until("the pool at the ceiling, 2", lambda: len(running_workers(c)) == 2, timeout=30)
        time.sleep(8)
    finally:
        stop.set()
        sampler.join()
    # Then it never grows past the ceiling, and says why everywhere
    assert max(seen) == 2, seen
    decisions = journal(c, "dqagent", "DQAGENT_EVENT=decision")
    assert any("schedule ceiling 2" in r["MESSAGE"] for r in decisions), [r["MESSAGE"] for r in decisions[-3:]]
    assert journal(c, "dqagent", "DQAGENT_EVENT=scale_up")
    status = c.unit_property("dqagent.service", "StatusText")
    assert f"schedule * {ceiling_from}" in status and "next change" in status, status
    report = json.loads(dqagent(c, "status", "--json").stdout)["schedule"]
    assert report["ceiling"] == 2 and report["floor"] is None and len(report["windows"]) == 1, report
    assert report["next_change"]["floor"] == 3, report  # the floor's pre-warm (PROCESS_STARTUP_DELAY early)
    text = dqagent(c, "status").stdout
    assert "(max=2)" in text and "next change:" in text, text
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        assert 'dqagent_schedule_workers{bound="ceiling",pool="default"} 2.0' in r.read().decode()
    changes = journal(c, "dqagent", "DQAGENT_EVENT=schedule_changed")
    assert changes and changes[0]["CEILING"] == "2", changes
    # When the burst ends: back to MIN
    set_backlog(redis_server, 0)
    wait_until("back at MIN", lambda: len(running_workers(c)) == 1, timeout=30)
    # Then 10 s before the floor's window opens, nothing is pre-warmed yet
    assert time.time() < opens - 10, f"the setup took too long: {opens - time.time():.0f} s before the window"
    time.sleep(opens - 10 - time.time())
    assert len(running_workers(c)) == 1, running_workers(c)
    # And when it opens, its 3 workers run, started within the lead before it (not at the next check, 60 s on)
    time.sleep(max(0.0, opens - time.time()))
    at_open = running_workers(c)
    assert len(at_open) == 3, at_open
    started = sorted(active_since(c, u) for u in at_open[1:])
    assert opens - 10 < started[0] and started[-1] <= opens, (started, opens)
    warm = [r for r in journal(c, "dqagent", "DQAGENT_EVENT=schedule_changed") if r.get("WARMING")]
    assert warm and warm[-1]["FLOOR"] == "3", warm

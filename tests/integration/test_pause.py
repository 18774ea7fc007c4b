"""`dqagent pause`, maintenance and `dqagent resume` in the real-systemd bench with real Redis.

- A pause while a burst arrives (cheap `/bin/sleep` workers; demand set in Redis): nothing starts; STATUS=,
  `status --json`, /metrics and the journal say paused, by whom and why; it survives `systemctl restart
  dqagent`; it expires on time (`pause_expired`) and the pool then follows demand.
- Who: an unprivileged user's pause is refused in one line, a member of PAUSE_GROUP's is taken; a pause while the
  agent is stopped is refused.
- `pause --at 0` drains every real Dramatiq worker gracefully, no message lost; `resume` restores the policy.
"""

from __future__ import annotations

import json
import time
import urllib.request
from datetime import datetime

from testbed.agent import dqagent, install, journal, running_workers, set_backlog, worker_names
from testbed.nspawn import Container
from testbed.redis import RedisServer, free_port
from testbed.wait import wait_until
from tests.integration.test_reliability import (
    ack_sets,
    done,
    dramatiq_ready,
    enqueue,
    install_real,
    outstanding,
    ready,
)


def paused_gauge(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    return "\n".join(line for line in text.splitlines() if line.startswith("dqagent_pause"))


def ups_since(c: Container, t: float) -> list[float]:
    """When the agent scaled up after `t` (wall clock; the install's own start-up 0 -> 1 came before)."""
    times = [int(e["__REALTIME_TIMESTAMP"]) / 1e6 for e in journal(c, "dqagent", "DQAGENT_EVENT=scale_up")]
    return [x for x in times if x > t]


def status_text(c: Container) -> str:
    return c.unit_property("dqagent.service", "StatusText")


def pause_of(c: Container) -> dict[str, object] | None:
    report = json.loads(dqagent(c, "status", "--json", user="nobody").stdout)
    pause: dict[str, object] | None = report["pools"]["default"]["pause"]
    assert report["pause"] == pause  # the old top-level keys are the default pool's
    return pause


def test_a_pause_holds_a_burst_survives_a_restart_and_expires_on_time(fresh_container: Container,
                                                                      redis_server: RedisServer) -> None:
    c, port = fresh_container, free_port()
    c.run(["groupadd", "ops"])
    c.run(["useradd", "--no-create-home", "-G", "ops", "alice"])
    c.run(["useradd", "--no-create-home", "bob"])
    install(c, redis_server, MIN_PROCESSES=1, MAX_PROCESSES=4, PAUSE_GROUP="ops", METRICS_ADDRESS=f"127.0.0.1:{port}")
    wait_until("one worker", lambda: running_workers(c) == worker_names(1), timeout=60)

    # Who: bob is refused in one line before anything is written; a pause while the agent is stopped is refused
    refused = dqagent(c, "pause", "--reason", "mine", user="bob", check=False)
    assert refused.returncode == 77 and refused.stderr.count("\n") == 1
    assert "only root and members of PAUSE_GROUP (ops) may pause; uid" in refused.stderr
    assert not c.run(["ls", "/var/lib/dqagent/agent/requests"]).stdout.strip()
    # ... and a member of the group may
    taken = dqagent(c, "pause", "--for", "1h", "--reason", "alice's", user="alice", check=False)
    assert taken.returncode == 0, taken.stderr
    assert "pool default paused by alice until" in taken.stdout
    assert dqagent(c, "resume", user="alice").stdout.startswith("pool default resumed")
    assert [e["DQAGENT_BY"] for e in journal(c, "dqagent", "DQAGENT_EVENT=resumed")] == ["alice"]

    # When root pauses for 45 s and a burst arrives
    paused_at = time.time()
    out = dqagent(c, "pause", "--for", "45s", "--reason", "deploy").stdout
    assert "pool default paused by root" in out and ": deploy" in out
    set_backlog(redis_server, 200)
    # Then nothing starts, and every place an operator looks says paused, by whom and why
    wait_until("STATUS= says paused", lambda: "paused by root for" in status_text(c) and "deploy" in status_text(c),
               timeout=10)
    pause = pause_of(c)
    assert pause is not None and (pause["by"], pause["reason"], pause["at"]) == ("root", "deploy", None)
    until = datetime.fromisoformat(str(pause["until"])).timestamp()  # (to the second, rounded down)
    assert paused_at + 44 <= until <= paused_at + 46 and pause["since"]
    assert 'dqagent_paused{pool="default"} 1.0' in paused_gauge(port)
    assert 'dqagent_pause_expiry_timestamp_seconds{pool="default"}' in paused_gauge(port)
    (event,) = [e for e in journal(c, "dqagent", "DQAGENT_EVENT=paused") if e["DQAGENT_BY"] == "root"]
    assert (event["DQAGENT_REASON"], event["DQAGENT_POOL"]) == ("deploy", "default")
    assert "status" in dqagent(c, "status").stdout and "paused by root" in dqagent(c, "status").stdout
    time.sleep(5)
    assert running_workers(c) == worker_names(1)

    # When the agent restarts (the workers keep running), the pause is still in force
    c.systemctl("restart", "dqagent")
    wait_until("STATUS= says paused again", lambda: "paused by root" in status_text(c), timeout=30)
    time.sleep(3)
    assert running_workers(c) == worker_names(1)
    assert not ups_since(c, paused_at)

    # Then it expires on time, and the pool follows demand
    wait_until("pause_expired", lambda: journal(c, "dqagent", "DQAGENT_EVENT=pause_expired"), timeout=60)
    expired_at = time.time()
    assert 45 <= expired_at - paused_at < 50
    wait_until("scaled up for the burst", lambda: len(running_workers(c)) == 4, timeout=30)
    assert min(ups_since(c, paused_at)) >= until
    assert "paused" not in status_text(c)
    assert 'dqagent_paused{pool="default"} 0.0' in paused_gauge(port)

    # A pause while the agent is stopped is refused, never queued for a later agent
    c.systemctl("stop", "dqagent")
    stopped = dqagent(c, "pause", check=False)
    assert stopped.returncode == 69 and "dqagent.service is inactive" in stopped.stderr
    assert not c.run(["ls", "/var/lib/dqagent/agent/requests"]).stdout.strip()


def test_maintenance_at_0_drains_every_real_worker_and_loses_nothing(fresh_container: Container,
                                                                     redis_server: RedisServer) -> None:
    c = fresh_container
    install_real(c, redis_server, threads=2, MIN_PROCESSES=1, MAX_PROCESSES=3, CHECK_INTERVAL=1,
                 PROCESS_STARTUP_DELAY=1, GRACEFUL_SHUTDOWN_TIMEOUT=20)
    wait_until("worker", lambda: running_workers(c) == worker_names(1), timeout=60)
    wait_until("Dramatiq's worker ready", lambda: dramatiq_ready(c))
    ids = enqueue(c, redis_server, 60, 1500)
    wait_until("scaled to 3", lambda: len(running_workers(c)) == 3, timeout=60)
    wait_until("tasks done on several workers", lambda: len(done(redis_server)) >= 6, timeout=60)

    # When maintenance holds the pool at 0 (below MIN_PROCESSES=1)
    out = dqagent(c, "pause", "--at", "0", "--for", "10m", "--reason", "migration").stdout
    assert "in maintenance at 0 workers by root" in out
    # Then every worker drains gracefully (its running tasks finish, its prefetched messages go back)
    wait_until("every worker stopped", lambda: running_workers(c) == [], timeout=60)
    time.sleep(3)
    assert running_workers(c) == []  # held at 0 while messages wait
    assert ack_sets(redis_server) == []
    waiting = ready(redis_server)
    assert waiting == outstanding(redis_server) and len(set(ids) - done(redis_server)) == waiting > 0
    assert "maintenance at 0 by root" in status_text(c)
    records = c.run(["journalctl", "-u", "dramatiq-worker@*", "-o", "cat", "--no-pager"]).stdout
    assert "SIGKILL" not in records

    # When it resumes, the policy's count comes back and every message is done
    dqagent(c, "resume")
    wait_until("scaled up again", lambda: len(running_workers(c)) >= 2, timeout=60)
    wait_until("every message done", lambda: set(ids) <= done(redis_server), timeout=180, interval=1)
    assert outstanding(redis_server) == 0

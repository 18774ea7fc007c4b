"""BROKER_FAILURE in the real-systemd bench with a real Redis that is stopped and started on the same port.

One container, cheap `/bin/sleep` workers, three phases (a reload switches the choice between them, with Redis
up): `hold` keeps the same workers (same PIDs); `min` keeps them through BROKER_FAILURE_GRACE, then goes to
MIN_PROCESSES; `fixed` goes to BROKER_FAILURE_COUNT after the grace period. Each time STATUS=, /metrics and the
journal say which choice applies, and when Redis is back the policy decides again (and the end is logged).
"""

from __future__ import annotations

import time
import urllib.request

from testbed.agent import install, journal, main_pids, running_workers, set_backlog, worker_names
from testbed.nspawn import Container
from testbed.redis import RedisServer, free_port
from testbed.wait import wait_until

ENV = "/etc/dqagent/dqagent.env"


def status(c: Container) -> str:
    return c.unit_property("dqagent.service", "StatusText")


def metric(port: int, mode: str) -> float | None:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    for line in text.splitlines():
        if line.startswith("dqagent_broker_failure{") and f'mode="{mode}"' in line:
            return float(line.rsplit(" ", 1)[1])
    return None


def choose(c: Container, **values: object) -> None:
    """Set BROKER_FAILURE* in the settings file and reload the agent (Redis up)."""
    lines = [line for line in c.run(["cat", ENV]).stdout.splitlines() if not line.startswith("BROKER_FAILURE")]
    c.write(ENV, "\n".join([*lines, *(f"{k}={v}" for k, v in values.items())]) + "\n")
    c.systemctl("reload", "dqagent")


def back(c: Container, redis: RedisServer, backlog: int, events_before: int) -> None:
    """Redis starts again (empty, same port) with `backlog` ready messages; the agent logs the outage's end."""
    redis.restart()
    set_backlog(redis, backlog)
    wait_until("broker_failure_ended logged", lambda: len(journal(c, "dqagent", "DQAGENT_EVENT=broker_failure_ended"))
               > events_before, timeout=75)  # Redis retries back off up to max(CHECK_INTERVAL, 30 s)


def test_each_broker_failure_choice_with_redis_stopped_and_back(fresh_container: Container,
                                                                redis_server: RedisServer) -> None:
    c, port = fresh_container, free_port()
    install(c, redis_server, MIN_PROCESSES=1, MAX_PROCESSES=4, METRICS_ADDRESS=f"127.0.0.1:{port}",
            BROKER_FAILURE="hold")
    set_backlog(redis_server, 12)  # 12 > 2 x 5: grows to 3 (15 > 12 >= 7.5)
    wait_until("3 workers", lambda: running_workers(c) == worker_names(3), timeout=60)
    pids = main_pids(c, worker_names(3))

    # hold: Redis stopped, the same three workers stay; STATUS= and /metrics say hold applies
    redis_server.stop()
    wait_until("STATUS= says hold", lambda: "BROKER_FAILURE=hold" in status(c), timeout=20)
    assert metric(port, "hold") == 1
    time.sleep(6)
    assert main_pids(c, worker_names(3)) == pids
    back(c, redis_server, 12, 0)
    assert main_pids(c, worker_names(3)) == pids and metric(port, "hold") == 0

    # min: the workers are kept through the 8 s grace period, then the pool goes to MIN (1)
    choose(c, BROKER_FAILURE="min", BROKER_FAILURE_GRACE=8)
    redis_server.stop()
    down = time.monotonic()
    wait_until("STATUS= names the grace period", lambda: "BROKER_FAILURE=min in" in status(c), timeout=20)
    wait_until("the pool at MIN", lambda: running_workers(c) == worker_names(1), timeout=40)
    assert time.monotonic() - down >= 7.5, "went to MIN before the grace period ended"
    assert "BROKER_FAILURE=min: 1 workers" in status(c)
    assert metric(port, "min") == 1
    applied = journal(c, "dqagent", "DQAGENT_EVENT=broker_failure_applied")
    assert [(r["MODE"], r["TARGET"]) for r in applied] == [("min", "1")]
    # back: the policy decides on the backlog again (12: 3 workers)
    back(c, redis_server, 12, 1)
    wait_until("back to 3 workers", lambda: running_workers(c) == worker_names(3), timeout=75)
    assert metric(port, "min") == 0

    # fixed: with an empty queue the policy keeps 1; Redis stopped, the pool goes to BROKER_FAILURE_COUNT (2)
    choose(c, BROKER_FAILURE="fixed", BROKER_FAILURE_COUNT=2, BROKER_FAILURE_GRACE=5)
    set_backlog(redis_server, 0)
    wait_until("the pool at 1", lambda: running_workers(c) == worker_names(1), timeout=40)
    redis_server.stop()
    down = time.monotonic()
    wait_until("the pool at the fixed count", lambda: running_workers(c) == worker_names(2), timeout=40)
    assert time.monotonic() - down >= 4.5, "went to the fixed count before the grace period ended"
    assert "BROKER_FAILURE=fixed: 2 workers" in status(c) and metric(port, "fixed") == 1
    back(c, redis_server, 0, 2)
    wait_until("back to 1 worker", lambda: running_workers(c) == worker_names(1), timeout=75)
    assert metric(port, "fixed") == 0
    # And the decision lines of the outages name their reason
    reasons = {r["MESSAGE"] for r in journal(c, "dqagent", "DQAGENT_EVENT=scale_down")}
    assert any("BROKER_FAILURE=min" in m for m in reasons), reasons

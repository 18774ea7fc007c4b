"""Faults the agent survives: Redis down (at start and mid-run), workers that cannot start."""

from __future__ import annotations

import time

from testbed.agent import install, journal, main_pids, running_workers, set_backlog, worker_names
from testbed.nspawn import Container
from testbed.redis import RedisServer
from testbed.wait import wait_until


def test_redis_down_mid_run_keeps_workers_logs_once_and_recovers(fresh_container: Container,
                                                                 redis_server: RedisServer) -> None:
    c = fresh_container
    install(c, redis_server, MIN_PROCESSES=1, MAX_PROCESSES=4)
    set_backlog(redis_server, 12)  # 12 > 2 x 5: grows to 3 (15 > 12 >= 7.5)
    wait_until("3 workers", lambda: running_workers(c) == worker_names(3))
    pids = main_pids(c, worker_names(3))

    # When Redis goes away for several checks
    redis_server.stop()
    wait_until("status says redis is down",
               lambda: "redis unavailable" in c.unit_property("dqagent.service", "StatusText"), timeout=15)
    # ... and retries with a growing, capped delay (2, 4, 8 s ...)
    wait_until("backoff", lambda: "retry in 8s" in c.unit_property("dqagent.service", "StatusText"), timeout=20)

    # Then the agent stays up, keeps the workers exactly, and logged the fault once
    assert c.unit_property("dqagent.service", "ActiveState") == "active"
    assert main_pids(c, worker_names(3)) == pids
    assert len(journal(c, "dqagent", "DQAGENT_EVENT=redis_error")) == 1

    # When Redis is back (empty), the agent notices by itself and scales down on real data
    redis_server.restart()
    wait_until("redis_ok logged", lambda: journal(c, "dqagent", "DQAGENT_EVENT=redis_ok"), timeout=40)
    wait_until("back to MIN", lambda: running_workers(c) == worker_names(1), timeout=30)


def test_redis_down_at_start_still_ready_with_min_workers(fresh_container: Container,
                                                          redis_server: RedisServer) -> None:
    c = fresh_container
    redis_server.stop()
    # (install --now would refuse to start: its checks fail while Redis is down)
    install(c, redis_server, now=False, MIN_PROCESSES=2, MAX_PROCESSES=4)
    c.systemctl("start", "dqagent")
    assert c.unit_property("dqagent.service", "ActiveState") == "active"
    wait_until("2 workers", lambda: running_workers(c) == worker_names(2))
    wait_until("status", lambda: "redis unavailable" in c.unit_property("dqagent.service", "StatusText"))
    redis_server.restart()
    set_backlog(redis_server, 100)
    wait_until("scales once redis is up", lambda: len(running_workers(c)) >= 3, timeout=30)


def test_worker_that_cannot_start_is_reported_not_counted_and_backed_off(fresh_container: Container,
                                                                         redis_server: RedisServer) -> None:
    c = fresh_container
    install(c, redis_server, MIN_PROCESSES=1, MAX_PROCESSES=4, CHECK_INTERVAL=1,
            DRAMATIQ_COMMAND="/bin/false")
    wait_until("worker_failed logged", lambda: journal(c, "dqagent", "DQAGENT_EVENT=worker_failed"), timeout=30)
    failed = journal(c, "dqagent", "DQAGENT_EVENT=worker_failed")[0]
    assert failed["UNIT"] == "dramatiq-worker@1.service"
    assert failed["RESULT"] in ("exit-code", "start-limit-hit")
    assert journal(c, "dqagent", "DQAGENT_EVENT=start_backoff")
    assert running_workers(c) == []
    # The agent itself stays healthy and does not hammer systemd: few start attempts in 8 s
    time.sleep(8)
    assert c.unit_property("dqagent.service", "ActiveState") == "active"
    assert len(journal(c, "dqagent", "DQAGENT_EVENT=scale_up")) <= 3


def test_system_bus_loss_restarts_agent_and_workers_are_adopted(fresh_container: Container,
                                                                redis_server: RedisServer) -> None:
    # Chosen behaviour: on losing the bus the agent exits (69) and systemd restarts it.
    c = fresh_container
    install(c, redis_server, MIN_PROCESSES=2, MAX_PROCESSES=4)
    wait_until("2 workers", lambda: running_workers(c) == worker_names(2))
    pids = main_pids(c, worker_names(2))
    agent_pid = c.unit_property("dqagent.service", "MainPID")

    c.run(["pkill", "-9", "-x", "dbus-daemon"])  # dbus.socket re-activates the bus on next use

    wait_until("agent restarted", lambda: c.unit_property("dqagent.service", "NRestarts") == "1", timeout=30)
    wait_until("agent active", lambda: c.unit_property("dqagent.service", "ActiveState") == "active")
    assert c.unit_property("dqagent.service", "MainPID") != agent_pid
    assert main_pids(c, worker_names(2)) == pids
    assert journal(c, "dqagent", "DQAGENT_EVENT=bus_lost")


SLOW_STOP = "#!/bin/sh\ntrap 'sleep 3; exit 0' TERM\nwhile :; do sleep 0.2; done\n"


def _only_instances(c: Container, n: int) -> bool:
    """Exactly instances 1..n are loaded and not inactive: no duplicate, stray or failed unit."""
    listed = c.systemctl("list-units", "dramatiq-worker@*", "--all", "--plain", "--no-legend").stdout
    rows = [line.split() for line in listed.splitlines() if line.strip()]
    live = sorted((r[0] for r in rows if r[2] != "inactive"), key=lambda u: int(u.split("@")[1].split(".")[0]))
    return live == worker_names(n) and all(r[2] in ("active", "inactive") for r in rows)


def test_agent_sigkilled_mid_scale_up_and_down_converges(fresh_container: Container,
                                                         redis_server: RedisServer) -> None:
    c = fresh_container
    c.write("/usr/local/bin/slow-stop-worker", SLOW_STOP, mode=0o755)
    install(c, redis_server, MIN_PROCESSES=1, MAX_PROCESSES=4, PROCESS_STARTUP_DELAY=3,
            DRAMATIQ_COMMAND="/usr/local/bin/slow-stop-worker")
    wait_until("1 worker", lambda: running_workers(c) == worker_names(1))

    # Kill the agent while it waits on a freshly started instance (mid scale-up)
    set_backlog(redis_server, 100)
    wait_until("a scale-up in progress", lambda: len(journal(c, "dqagent", "DQAGENT_EVENT=scale_up")) >= 2)
    c.run(["kill", "-9", c.unit_property("dqagent.service", "MainPID")])
    wait_until("restarted", lambda: c.unit_property("dqagent.service", "NRestarts") == "1", timeout=20)
    wait_until("converged to 4", lambda: running_workers(c) == worker_names(4), timeout=60)
    wait_until("exactly 1..4", lambda: _only_instances(c, 4), timeout=20)

    # Kill it again while workers take 3 s to stop (mid scale-down)
    set_backlog(redis_server, 0)
    wait_until("a scale-down in progress", lambda: journal(c, "dqagent", "DQAGENT_EVENT=scale_down"), timeout=30)
    c.run(["kill", "-9", c.unit_property("dqagent.service", "MainPID")])
    wait_until("restarted again", lambda: c.unit_property("dqagent.service", "NRestarts") == "2", timeout=20)
    wait_until("converged to 1", lambda: running_workers(c) == worker_names(1), timeout=60)
    wait_until("exactly 1", lambda: _only_instances(c, 1), timeout=20)


def test_redis_refusing_auth_keeps_workers_and_says_so(fresh_container: Container,
                                                       redis_with_password: RedisServer) -> None:
    c, locked = fresh_container, redis_with_password
    install(c, locked, now=False, MIN_PROCESSES=2, MAX_PROCESSES=4)
    c.write("/etc/dqagent/redis-password", "a-wrong-one\n", mode=0o600)
    c.systemctl("start", "dqagent")
    wait_until("2 workers", lambda: running_workers(c) == worker_names(2))
    wait_until("status", lambda: "redis unavailable" in c.unit_property("dqagent.service", "StatusText"))
    time.sleep(5)
    assert c.unit_property("dqagent.service", "ActiveState") == "active"
    assert running_workers(c) == worker_names(2)
    errors = journal(c, "dqagent", "DQAGENT_EVENT=redis_error")
    assert len(errors) == 1
    text = str(errors) + c.unit_property("dqagent.service", "StatusText")
    assert "a-wrong-one" not in text and locked.password not in text

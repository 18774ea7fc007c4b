"""The agent in a real systemd: units scaled over D-Bus, READY/STATUS/WATCHDOG, journal fields."""

from __future__ import annotations

from testbed.agent import (
    dqagent,
    install,
    journal,
    main_pids,
    running_workers,
    set_backlog,
    settings_text,
    worker_names,
)
from testbed.nspawn import Container
from testbed.redis import RedisServer
from testbed.wait import wait_until


def test_scales_up_one_per_check_to_max_then_down_to_min(fresh_container: Container,
                                                         redis_server: RedisServer) -> None:
    c = fresh_container
    # Given an installed agent with an empty queue: it starts at MIN_PROCESSES=1, after READY
    install(c, redis_server, MIN_PROCESSES=1, MAX_PROCESSES=4)
    assert c.unit_property("dqagent.service", "ActiveState") == "active"
    wait_until("one worker", lambda: running_workers(c) == worker_names(1))
    wait_until("status line",
               lambda: "1 running of 1 wanted; queue 0" in c.unit_property("dqagent.service", "StatusText"))

    # When the backlog is far above n x 5, workers grow one per check, up to MAX
    set_backlog(redis_server, 100)
    wait_until("4 workers", lambda: running_workers(c) == worker_names(4), timeout=40)
    ups = journal(c, "dqagent", "DQAGENT_EVENT=scale_up")
    assert [int(r["TARGET"]) for r in ups] == [1, 2, 3, 4]  # startup brings it to MIN first

    # When the backlog is below n x 2.5, they shrink back to MIN, highest numbers first
    set_backlog(redis_server, 0)
    wait_until("1 worker", lambda: running_workers(c) == worker_names(1), timeout=40)
    downs = journal(c, "dqagent", "DQAGENT_EVENT=scale_down")
    assert [int(r["TARGET"]) for r in downs] == [3, 2, 1]
    stopped = [r["UNIT"] for r in journal(c, "dqagent", "DQAGENT_EVENT=worker_stopped")]
    assert stopped == ["dramatiq-worker@4.service", "dramatiq-worker@3.service", "dramatiq-worker@2.service"]

    # And every decision carries the structured fields
    decision = journal(c, "dqagent", "DQAGENT_EVENT=decision")[-1]
    for key in ("QUEUE", "QUEUE_LENGTH", "WORKERS", "TARGET", "POLICY"):
        assert key in decision
    assert decision["SYSLOG_IDENTIFIER"] == "dqagent" and decision["QUEUE"] == "dqtest"


def test_manual_scale_up_and_down(fresh_container: Container, redis_server: RedisServer) -> None:
    c = fresh_container
    install(c, redis_server, now=False, MIN_PROCESSES=0, MAX_PROCESSES=6)
    out = dqagent(c, "scale-up", "--processes", "3").stdout
    assert running_workers(c) == worker_names(3)
    assert "dramatiq-worker@3.service: started" in out
    out = dqagent(c, "scale-down", "--processes", "2").stdout
    assert running_workers(c) == worker_names(1)
    assert "dramatiq-worker@3.service: stopped" in out and "dramatiq-worker@2.service: stopped" in out
    # Beyond MAX is clamped with a message
    result = dqagent(c, "scale-up", "--processes", "99")
    assert "going to 6" in result.stderr
    assert running_workers(c) == worker_names(6)


def test_restart_keeps_worker_pids_and_stop_stops_them(fresh_container: Container,
                                                      redis_server: RedisServer) -> None:
    c = fresh_container
    install(c, redis_server, MIN_PROCESSES=2, MAX_PROCESSES=4)
    wait_until("2 workers", lambda: running_workers(c) == worker_names(2))
    before = main_pids(c, worker_names(2))
    c.systemctl("restart", "dqagent")
    assert c.unit_property("dqagent.service", "ActiveState") == "active"
    assert main_pids(c, worker_names(2)) == before
    assert len(journal(c, "dqagent", "DQAGENT_EVENT=adopted")) >= 2
    c.systemctl("stop", "dqagent")
    assert running_workers(c) == []
    listed = c.systemctl("list-units", "dramatiq-worker@*", "--all", "--plain", "--no-legend").stdout
    assert "active" not in listed.replace("inactive", "")


def test_frozen_agent_is_killed_by_watchdog_and_workers_adopted(fresh_container: Container,
                                                                redis_server: RedisServer) -> None:
    c = fresh_container
    install(c, redis_server, watchdog_s=3, MIN_PROCESSES=2, MAX_PROCESSES=4)
    wait_until("2 workers", lambda: running_workers(c) == worker_names(2))
    before = main_pids(c, worker_names(2))
    agent_pid = int(c.unit_property("dqagent.service", "MainPID"))
    c.run(["kill", "-STOP", str(agent_pid)])
    wait_until("watchdog restart", lambda: c.unit_property("dqagent.service", "NRestarts") == "1", timeout=30)
    wait_until("agent active again", lambda: c.unit_property("dqagent.service", "ActiveState") == "active")
    assert int(c.unit_property("dqagent.service", "MainPID")) != agent_pid
    assert main_pids(c, worker_names(2)) == before


def test_bad_setting_fails_once_with_one_line_error(fresh_container: Container,
                                                    redis_server: RedisServer) -> None:
    c = fresh_container
    install(c, redis_server, now=False)
    c.write("/etc/dqagent/dqagent.env", settings_text(redis_server, MIN_PROCESSES=5, MAX_PROCESSES=2))
    result = c.systemctl("start", "dqagent", check=False)
    assert result.returncode != 0
    wait_until("failed", lambda: c.unit_property("dqagent.service", "ActiveState") == "failed")
    assert c.unit_property("dqagent.service", "NRestarts") == "0"
    assert c.unit_property("dqagent.service", "ExecMainStatus") == "78"
    messages = [r["MESSAGE"] for r in journal(c, "dqagent") if r.get("SYSLOG_IDENTIFIER") == "dqagent"]
    assert "dqagent: invalid MAX_PROCESSES='2': expected an integer in 5..1000 (>= MIN_PROCESSES=5, >= 1)" \
        in messages
    assert running_workers(c) == []

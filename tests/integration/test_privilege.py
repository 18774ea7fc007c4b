"""Least privilege: the agent runs as `dqagent`, polkit lets it manage numbered workers and nothing else."""

from __future__ import annotations

import json
import re

import pytest

from testbed.agent import dqagent, install, running_workers, worker_names
from testbed.nspawn import Container
from testbed.redis import RedisServer
from testbed.wait import wait_until

REFUSED = ("Access denied", "Interactive authentication required")


def test_agent_runs_as_dqagent_and_scales(fresh_container: Container, redis_server: RedisServer) -> None:
    c = fresh_container
    install(c, redis_server, MIN_PROCESSES=2)
    assert c.unit_property("dqagent.service", "User") == "dqagent"
    pid = c.unit_property("dqagent.service", "MainPID")
    status = c.run(["cat", f"/proc/{pid}/status"]).stdout
    uid = c.run(["id", "-u", "dqagent"]).stdout.strip()
    assert re.search(rf"^Uid:\s+{uid}\s", status, re.M)
    assert re.search(r"^CapEff:\s+0+$", status, re.M)
    # READY does not wait for the start jobs the agent issued (they run in the background)
    wait_until("2 workers", lambda: running_workers(c) == worker_names(2))
    worker_user = c.run(["ps", "-o", "user=", "-p", c.unit_property("dramatiq-worker@1.service", "MainPID")])
    assert worker_user.stdout.strip() == "dqworker"


@pytest.mark.parametrize("cmd", [
    ["start", "redis-server.service"],
    ["stop", "redis-server.service"],
    ["start", "dbus.service"],
    ["stop", "dbus.service"],
    ["kill", "dbus.service"],
    ["restart", "systemd-journald.service"],
    ["start", "dramatiq-worker@x.service"],
    ["stop", "dramatiq-worker@x.service"],
    ["start", "dramatiq-worker@1.socket"],
    # Allowed units, but verbs outside start/stop/reset-failed
    ["set-property", "dramatiq-worker@1.service", "MemoryMax=1M"],
    ["enable", "dramatiq-worker@1.service"],
    ["daemon-reload"],
])
def test_dqagent_user_is_refused_everything_else(fresh_container: Container, redis_server: RedisServer,
                                                 cmd: list[str]) -> None:
    c = fresh_container
    install(c, redis_server, now=False)
    result = c.run(["systemctl", "--no-ask-password", *cmd], user="dqagent", check=False)
    assert result.returncode != 0
    assert any(text in result.stderr for text in REFUSED), result.stderr


def test_dqagent_user_may_not_restart_nor_kill_a_worker(fresh_container: Container,
                                                       redis_server: RedisServer) -> None:
    c = fresh_container
    install(c, redis_server, MIN_PROCESSES=1)
    wait_until("worker", lambda: running_workers(c) == worker_names(1))
    pid = c.unit_property("dramatiq-worker@1.service", "MainPID")
    for verb in ("restart", "kill"):
        result = c.run(["systemctl", "--no-ask-password", verb, "dramatiq-worker@1.service"], user="dqagent",
                       check=False)
        assert result.returncode != 0 and any(text in result.stderr for text in REFUSED), (verb, result.stderr)
    # the worker was neither restarted nor signalled
    assert c.unit_property("dramatiq-worker@1.service", "MainPID") == pid
    assert c.unit_property("dramatiq-worker@1.service", "NRestarts") == "0"
    assert running_workers(c) == worker_names(1)


def test_dqagent_user_may_scale_numbered_workers(fresh_container: Container, redis_server: RedisServer) -> None:
    c = fresh_container
    install(c, redis_server, now=False, MIN_PROCESSES=0)
    dqagent(c, "scale-up", "--processes", "2", user="dqagent")
    assert running_workers(c) == worker_names(2)
    dqagent(c, "scale-down", "--processes", "2", user="dqagent")
    assert running_workers(c) == []


def test_other_users_may_not_scale(fresh_container: Container, redis_server: RedisServer) -> None:
    c = fresh_container
    install(c, redis_server, now=False, MIN_PROCESSES=0)
    result = dqagent(c, "scale-up", "--processes", "1", user="nobody", check=False)
    assert result.returncode == 77, result.stderr
    assert "permission denied by systemd/polkit" in result.stderr and "Traceback" not in result.stderr
    assert running_workers(c) == []
    dqagent(c, "scale-up", "--processes", "1")  # root may
    result = dqagent(c, "scale-down", "--processes", "1", user="nobody", check=False)
    assert result.returncode == 77 and "permission denied by systemd/polkit" in result.stderr
    assert running_workers(c) == worker_names(1)


def test_status_for_any_user_reports_what_it_cannot_read(fresh_container: Container,
                                                         redis_with_password: RedisServer) -> None:
    c, pw = fresh_container, redis_with_password
    install(c, pw, now=False, MIN_PROCESSES=1)
    c.write("/etc/dqagent/redis-password", pw.password + "\n", mode=0o600)
    dqagent(c, "install", "--now")  # its checks need the password to reach Redis
    result = dqagent(c, "status", "--json", user="nobody")
    assert "Traceback" not in result.stderr
    report = json.loads(result.stdout)
    assert report["queue_length"] is None
    assert "password file /etc/dqagent/redis-password unavailable" in report["redis_error"]
    assert report["current_processes"] == 1  # systemd is readable by anyone
    text = dqagent(c, "status", user="nobody")
    assert "Traceback" not in text.stderr and text.stderr == ""
    assert "queue length (outstanding): unavailable" in text.stdout
    assert "password file /etc/dqagent/redis-password unavailable (Permission denied)" in text.stdout
    assert "current workers: 1" in text.stdout
    assert dqagent(c, "status").stdout.count("unavailable") == 0  # root reads the credential


def test_dqagent_user_may_start_exactly_the_instance_numbers_the_agent_uses(fresh_container: Container,
                                                                           redis_server: RedisServer) -> None:
    """The rule admitted @0, leading zeros and any number of digits (unlimited units)."""
    c = fresh_container
    install(c, redis_server, now=False, MIN_PROCESSES=0)
    for unit in ("dramatiq-worker@0.service", "dramatiq-worker@01.service", "dramatiq-worker@0001.service",
                 "dramatiq-worker@1001.service", "dramatiq-worker@99999.service"):
        result = c.run(["systemctl", "--no-ask-password", "start", unit], user="dqagent", check=False)
        assert result.returncode != 0 and any(text in result.stderr for text in REFUSED), (unit, result.stderr)
        assert c.unit_property(unit, "ActiveState") == "inactive", unit
    for unit in ("dramatiq-worker@1.service", "dramatiq-worker@1000.service"):
        c.run(["systemctl", "--no-ask-password", "start", unit], user="dqagent")
        assert c.unit_property(unit, "ActiveState") == "active", unit
        c.run(["systemctl", "--no-ask-password", "stop", unit], user="dqagent")

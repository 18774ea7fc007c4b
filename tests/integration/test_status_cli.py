"""`dqagent status` and `start --processes`, read back from live systemd and Redis."""

from __future__ import annotations

import json
import time
from datetime import datetime

from testbed.agent import DQAGENT, VENV_BIN, dqagent, install, running_workers, set_backlog, settings_text, worker_names
from testbed.nspawn import Container
from testbed.redis import RedisServer
from testbed.wait import wait_until

OLD_KEYS = {"queue_length", "current_processes", "min_processes", "max_processes", "scale_up_threshold",
            "scale_down_threshold", "monitoring_active", "process_list"}


def test_status_json_uses_old_keys_and_live_state(fresh_container: Container, redis_server: RedisServer) -> None:
    c = fresh_container
    install(c, redis_server, MIN_PROCESSES=2, MAX_PROCESSES=5, CHECK_INTERVAL=30)
    wait_until("2 workers", lambda: running_workers(c) == worker_names(2))
    set_backlog(redis_server, 7)

    report = json.loads(dqagent(c, "status", "--json").stdout)
    assert set(report) >= OLD_KEYS
    assert report["queue_length"] == 7
    assert report["current_processes"] == 2
    assert (report["min_processes"], report["max_processes"]) == (2, 5)
    assert (report["scale_up_threshold"], report["scale_down_threshold"]) == (10, 5)
    assert report["monitoring_active"] is True
    units = [p["unit"] for p in report["process_list"]]
    assert units == worker_names(2)
    for p in report["process_list"]:
        assert p["pid"] == int(c.unit_property(p["unit"], "MainPID"))
        assert p["status"] == "running"
        datetime.fromisoformat(p["start_time"])

    # The agent's own STATUS= text is shown too (new key; the old ones are unchanged)
    assert report["agent_status_text"] == c.unit_property("dqagent.service", "StatusText")
    assert "of 2 wanted" in report["agent_status_text"] and report["failing_workers"] == []

    text = dqagent(c, "status").stdout
    assert "current workers: 2" in text and "scale-up threshold (step policy): 10" in text
    assert "dramatiq-worker@1.service" in text
    assert "agent (dqagent.service): active: " in text and "failing workers" not in text

    # Without the agent running, status still reads systemd and Redis
    c.systemctl("stop", "dqagent")
    report = json.loads(dqagent(c, "status", "--json").stdout)
    assert report["monitoring_active"] is False and report["current_processes"] == 0
    assert report["queue_length"] == 7


def test_status_with_redis_down_says_unavailable(fresh_container: Container, redis_server: RedisServer) -> None:
    c = fresh_container
    install(c, redis_server, now=False)
    redis_server.stop()
    result = dqagent(c, "status")
    assert result.returncode == 0 and "Traceback" not in result.stderr
    assert "queue length (outstanding): unavailable" in result.stdout
    assert "redis unavailable" in result.stdout


def test_start_processes_sets_initial_count_clamped(fresh_container: Container, redis_server: RedisServer) -> None:
    c = fresh_container
    install(c, redis_server, now=False, MIN_PROCESSES=1, MAX_PROCESSES=3, CHECK_INTERVAL=60)
    c.write("/etc/systemd/system/dqagent.service.d/20-processes.conf",
            "[Service]\nExecStart=\nExecStart=" + " ".join(
                [DQAGENT, "--env-file", "/etc/dqagent/dqagent.env", "start",
                 "--processes", "7"]) + "\n")
    c.systemctl("daemon-reload")
    c.systemctl("start", "dqagent")
    # Held until the first check (CHECK_INTERVAL=60), although an empty queue would scale it down
    wait_until("3 workers (7 clamped to MAX)", lambda: running_workers(c) == worker_names(3))
    time.sleep(3)
    assert running_workers(c) == worker_names(3)
    messages = c.run(["journalctl", "-u", "dqagent", "-o", "cat", "--no-pager"]).stdout
    assert "--processes 7 clamped to 3" in messages


def test_bad_arguments_one_line_exit_2(fresh_container: Container, redis_server: RedisServer) -> None:
    c = fresh_container
    install(c, redis_server, now=False)
    for bad in ("0", "-3", "abc"):
        result = dqagent(c, "scale-up", "--processes", bad, check=False)
        assert result.returncode == 2
        assert result.stderr.count("\n") == 1 and "--processes" in result.stderr


USAGE_ERROR = "dramatiq: error: the following arguments are required: broker, module"


def test_status_shows_why_a_worker_fails(fresh_container: Container, redis_server: RedisServer) -> None:
    c = fresh_container
    # Given a worker whose Dramatiq command has no broker module: Dramatiq exits 2 with a usage error,
    # and systemd restarts it (Restart=on-failure) until the start limit. The agent is not running
    # (it refuses a command Dramatiq's parser rejects), so the worker is started by hand.
    install(c, redis_server, now=False, DRAMATIQ_COMMAND=f"{VENV_BIN}/dramatiq")
    c.systemctl("start", "dramatiq-worker@1.service", check=False)
    # (Between restarts the unit is briefly running, with no exit status yet: wait for the start limit.)
    wait_until("the worker failed after its restarts",
               lambda: c.unit_property("dramatiq-worker@1.service", "ActiveState") == "failed", timeout=60)
    wait_until("its error is in the journal", lambda: USAGE_ERROR in c.run(
        ["journalctl", "-u", "dramatiq-worker@1.service", "-o", "cat", "--no-pager"]).stdout, timeout=30)

    # Then status, as root, shows systemd's result, the exit status and the worker's own last line
    text = dqagent(c, "status").stdout
    assert "failing workers:" in text and "exit status 2" in text, text
    assert f"last logged: {USAGE_ERROR}" in text
    assert "more: journalctl -u dramatiq-worker@1.service" in text
    assert "DRAMATIQ_COMMAND" in text  # the command Dramatiq rejects is named
    report = json.loads(dqagent(c, "status", "--json").stdout)
    [failing] = report["failing_workers"]
    assert failing["unit"] == "dramatiq-worker@1.service" and failing["result"] in ("exit-code", "start-limit-hit")
    assert (failing["exit_code"], failing["exit_status"], failing["last_line"]) == (1, 2, USAGE_ERROR)
    assert failing["restarts"] >= 1 and failing["state"] == "failed/failed"

    # And a user who may not read the system journal is told how to see more instead
    result = dqagent(c, "status", user="nobody")
    assert result.returncode == 0 and "Traceback" not in result.stderr
    assert "last logged" not in result.stdout and "exit status 2" in result.stdout, result.stdout
    assert USAGE_ERROR not in result.stdout, result.stdout
    assert "no log line readable by this user" in result.stdout
    assert "journalctl -u dramatiq-worker@1.service" in result.stdout

    # And the agent refuses that command at start: one line naming DRAMATIQ_COMMAND, exit 78, no restart loop
    c.systemctl("start", "dqagent", check=False)
    wait_until("agent failed", lambda: c.unit_property("dqagent.service", "ActiveState") == "failed", timeout=30)
    assert c.unit_property("dqagent.service", "ExecMainStatus") == "78"
    assert c.unit_property("dqagent.service", "NRestarts") == "0"
    logged = c.run(["journalctl", "-u", "dqagent", "-o", "cat", "--no-pager"]).stdout
    assert "invalid DRAMATIQ_COMMAND=" in logged and "the following arguments are required: broker" in logged
    c.systemctl("stop", "dramatiq-worker@1.service", check=False)

    # Given: a worker whose last line holds an OSC sequence (retitle the terminal) and that exits non-zero
    # (the settings file is read at each worker start: no install needed)
    c.write("/usr/local/bin/osc-worker", "#!/bin/sh\nprintf 'boom \\033]0;pwned-title\\007 end\\n'\nexit 3\n")
    c.run(["chmod", "0755", "/usr/local/bin/osc-worker"])
    c.write("/etc/dqagent/dqagent.env", settings_text(redis_server, DRAMATIQ_COMMAND="/usr/local/bin/osc-worker"))
    c.systemctl("start", "dramatiq-worker@2.service", check=False)
    wait_until("its line is in the journal", lambda: "pwned-title" in c.run(
        ["journalctl", "-a", "-u", "dramatiq-worker@2.service", "-o", "cat", "--no-pager"]).stdout, timeout=30)
    wait_until("it is failing", lambda: "dramatiq-worker@2.service" in json.dumps(
        json.loads(dqagent(c, "status", "--json").stdout)["failing_workers"]), timeout=30)
    # Then: status shows the line with the ESC and BEL bytes as visible escapes; --json keeps it as JSON escapes
    text = dqagent(c, "status").stdout
    assert "last logged: boom \\x1b]0;pwned-title\\x07 end" in text, text
    assert "\x1b" not in text and "\x07" not in text
    [osc] = [f for f in json.loads(dqagent(c, "status", "--json").stdout)["failing_workers"]
             if f["unit"] == "dramatiq-worker@2.service"]
    assert osc["last_line"] == "boom \x1b]0;pwned-title\x07 end"
    c.systemctl("stop", "dramatiq-worker@2.service", check=False)

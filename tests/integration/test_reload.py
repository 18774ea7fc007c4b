"""`systemctl reload dqagent` and the settings file, in a real systemd 252 with a real Redis.

One container and one Redis for the module: each test starts by writing a known settings file and
reloading it (asserting that this works), and leaves the agent running. Workers are counted, not named
@1..@N: the tests scale the same numbers up within a minute, and a number started 3 times in 60 s is
skipped for a fresh one (@5 ...: systemd's start limit, docs/operations.md); a start this bench's cgroup v1
fails now and then counts too. Stops take the highest numbers first, so @1 is the one left at MIN 1.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest

from testbed.agent import (
    DQAGENT,
    QUEUE,
    exposure,
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

ENV = "/etc/dqagent/dqagent.env"


@pytest.fixture(scope="module")
def agent(module_container: Container, redis: RedisServer) -> Container:
    """dqagent installed and running (MIN 1, MAX 4, CHECK_INTERVAL 1, `/bin/sleep infinity` workers)."""
    c = module_container
    set_backlog(redis, 0)
    install(c, redis, MIN_PROCESSES=1, MAX_PROCESSES=4)
    wait_until("one worker", lambda: running_workers(c) == worker_names(1))
    return c


def configure(c: Container, redis: RedisServer, **overrides: Any) -> None:
    """Write the settings file and reload it; the reload must succeed."""
    c.write(ENV, settings_text(redis, **overrides))
    c.systemctl("reload", "dqagent")


def settle(c: Container, redis: RedisServer, backlog: int, workers: int, **overrides: Any) -> str:
    """Reload `overrides`, set the backlog, wait for `workers` running; returns the agent's MainPID."""
    configure(c, redis, **overrides)
    set_backlog(redis, backlog)
    wait_until(f"{workers} workers", lambda: len(running_workers(c)) == workers, timeout=60)
    # ... and settled for the agent too: its start checks done (a unit it is still starting is not a
    # stop candidate, so a reload right after would stop other, settled numbers)
    wait_until("the agent counts them running", lambda: c.unit_property("dqagent.service", "StatusText")
               .startswith(f"{workers} running of {workers} wanted;"), timeout=30)
    return c.unit_property("dqagent.service", "MainPID")


def reload_events(c: Container, name: str) -> list[dict[str, Any]]:
    return journal(c, "dqagent", f"DQAGENT_EVENT={name}")


def test_status_reads_the_service_file_from_the_old_managers_directory(agent: Container,
                                                                        redis: RedisServer) -> None:
    c = agent
    configure(c, redis, MIN_PROCESSES=1, MAX_PROCESSES=4)
    # Given the old manager's directory, holding a .env for another queue
    c.write("/srv/old-manager/.env", "DRAMATIQ_QUEUE_NAME=old_managers_queue\nMAX_PROCESSES=9\n")
    in_old_dir = ["sh", "-c", 'cd /srv/old-manager && exec "$0" "$@"', DQAGENT, "status"]

    # When status runs there without --env-file, it reports the service's settings and says so
    report = json.loads(c.run([*in_old_dir, "--json"]).stdout)
    assert report["settings_file"] == ENV
    assert list(report["queues"]) == [QUEUE] and report["max_processes"] == 4
    text = c.run(in_old_dir).stdout
    assert f"settings: {ENV}" in text.splitlines()

    # And with no settings file at all, it says it runs on defaults
    c.run(["mv", ENV, ENV + ".away"])
    try:
        text = c.run(in_old_dir).stdout
        assert "settings: none: defaults" in text.splitlines()
    finally:
        c.run(["mv", ENV + ".away", ENV])


def test_reload_below_the_running_count_scales_down_same_pid(agent: Container, redis: RedisServer) -> None:
    c = agent
    pid = settle(c, redis, 100, 4, MIN_PROCESSES=1, MAX_PROCESSES=4)
    lowest = running_workers(c)[:2]
    kept = main_pids(c, lowest)

    # When MAX_PROCESSES goes below the running count and the agent is reloaded
    c.write(ENV, settings_text(redis, MIN_PROCESSES=1, MAX_PROCESSES=2))
    result = c.systemctl("reload", "dqagent")
    assert result.returncode == 0

    # Then it scales down to the new MAX from the highest numbers, in the same process
    wait_until("2 workers", lambda: running_workers(c) == lowest, timeout=30)
    assert c.unit_property("dqagent.service", "MainPID") == pid
    assert main_pids(c, lowest) == kept  # the workers that stay are the same processes
    last = reload_events(c, "reloaded")[-1]
    assert last["CHANGED"] == "MAX_PROCESSES" and "MAX_PROCESSES 4 -> 2" in last["MESSAGE"]
    assert last["SETTINGS_FILE"] == ENV
    assert c.unit_property("dqagent.service", "ActiveState") == "active"

    # `kill -HUP` by hand reloads too: RELOADING=1 then READY=1 bring the unit back to active
    count = len(reload_events(c, "reloaded"))
    c.run(["kill", "-HUP", pid])
    wait_until("a second reload", lambda: len(reload_events(c, "reloaded")) == count + 1)
    wait_until("active after READY=1", lambda: c.unit_property("dqagent.service", "ActiveState") == "active")
    assert c.unit_property("dqagent.service", "MainPID") == pid
    set_backlog(redis, 0)


def test_bad_value_fails_the_reload_and_changes_nothing(agent: Container, redis: RedisServer) -> None:
    c = agent
    pid = settle(c, redis, 0, 1, MIN_PROCESSES=1, MAX_PROCESSES=2)
    before = c.run(["journalctl", "-u", "dqagent", "-o", "cat", "--no-pager"]).stdout.count("MAX_PROCESSES")
    failures = len(reload_events(c, "reload_failed"))

    # When the file holds a bad MAX_PROCESSES (and a valid CHECK_INTERVAL change)
    c.write(ENV, settings_text(redis, MIN_PROCESSES=1, MAX_PROCESSES="lots", CHECK_INTERVAL=2))
    result = c.systemctl("reload", "dqagent", check=False)

    # Then systemctl reload fails, one journal line names the key, the agent keeps running in the same PID
    assert result.returncode != 0
    wait_until("the failure in the journal", lambda: len(reload_events(c, "reload_failed")) == failures + 1)
    (failed,) = reload_events(c, "reload_failed")[failures:]
    assert failed["KEY"] == "MAX_PROCESSES" and failed["PRIORITY"] == "3"
    wait_until("systemd's reload verdict", lambda: "Reload failed" in c.run(
        ["journalctl", "-u", "dqagent", "-o", "cat", "--no-pager", "-n", "5"]).stdout)
    after = c.run(["journalctl", "-u", "dqagent", "-o", "cat", "--no-pager"]).stdout.count("MAX_PROCESSES")
    assert after == before + 1
    assert c.unit_property("dqagent.service", "MainPID") == pid
    assert c.unit_property("dqagent.service", "ActiveState") == "active"

    # And the old settings stay in force: checks every 1 s, and never more than the old MAX=2 workers
    wait_until("status after the reload", lambda: "next check in 1s" in c.unit_property(
        "dqagent.service", "StatusText"))
    set_backlog(redis, 100)
    wait_until("2 workers", lambda: len(running_workers(c)) == 2, timeout=30)
    two = running_workers(c)
    decisions = len(journal(c, "dqagent", "DQAGENT_EVENT=decision"))
    wait_until("three more checks", lambda: len(journal(c, "dqagent", "DQAGENT_EVENT=decision")) >= decisions + 3,
               timeout=30)
    # (workers read only DRAMATIQ_COMMAND and WORKER_DIRECTORY: the bad MAX_PROCESSES does not fail them)
    assert running_workers(c) == two and len(two) == 2, c.run(["journalctl", "--no-pager", "-n", "60"]).stdout
    assert "next check in 1s" in c.unit_property("dqagent.service", "StatusText")
    set_backlog(redis, 0)


def test_reload_during_a_scale_up_completes_both(agent: Container, redis: RedisServer) -> None:
    c = agent
    # Starts take 3 s each (PROCESS_STARTUP_DELAY): a reload arrives while one is in progress
    pid = settle(c, redis, 0, 1, MIN_PROCESSES=1, MAX_PROCESSES=3, PROCESS_STARTUP_DELAY=3)
    ups = len(reload_events(c, "scale_up"))
    set_backlog(redis, 100)
    wait_until("a scale-up under way", lambda: len(reload_events(c, "scale_up")) > ups, timeout=30, interval=0.05)

    c.write(ENV, settings_text(redis, MIN_PROCESSES=1, MAX_PROCESSES=4, PROCESS_STARTUP_DELAY=3))
    result = c.systemctl("reload", "dqagent")
    assert result.returncode == 0

    # The reload arrived while a start job was in progress (starts run in the background): the reload
    # is applied at once and the start job still completes, then the new MAX is reached
    def ts(record: dict[str, Any]) -> int:
        return int(record["__MONOTONIC_TIMESTAMP"])

    asked = ts([r for r in journal(c, "dqagent") if r["MESSAGE"].startswith("Reloading dqagent")][-1])
    scale_up = [r for r in reload_events(c, "scale_up") if ts(r) < asked][-1]
    reloaded = reload_events(c, "reloaded")[-1]
    assert "MAX_PROCESSES 3 -> 4" in reloaded["MESSAGE"]
    assert ts(scale_up) < asked < ts(reloaded)
    wait_until("the start under way at the reload completed",
               lambda: any(ts(r) > ts(scale_up) for r in reload_events(c, "worker_started")), timeout=30)
    wait_until("4 workers (the new MAX)", lambda: len(running_workers(c)) == 4, timeout=60)
    assert c.unit_property("dqagent.service", "MainPID") == pid
    set_backlog(redis, 0)


def test_new_redis_password_applies_on_reload_and_never_leaks(fresh_container: Container,
                                                              redis_with_password: RedisServer) -> None:
    # (a container of its own: the module's Redis has no password)
    c, pw = fresh_container, redis_with_password
    install(c, pw, now=False, MIN_PROCESSES=2, MAX_PROCESSES=2)
    # (the password file as an older install left it, 0600 root:root: install brings it to 0640 root:dqagent)
    c.run(["chgrp", "root", "/etc/dqagent/redis-password"])
    c.write("/etc/dqagent/redis-password", pw.password + "\n", mode=0o600)
    again = c.run([DQAGENT, "--env-file", ENV, "install"]).stdout
    assert "/etc/dqagent/redis-password: now 0640 root:dqagent" in again, again
    c.systemctl("start", "dqagent")
    wait_until("2 workers", lambda: running_workers(c) == worker_names(2), timeout=60)
    pid = c.unit_property("dqagent.service", "MainPID")
    workers = main_pids(c, worker_names(2))
    errors, oks = len(reload_events(c, "redis_error")), len(reload_events(c, "redis_ok"))

    # Given Redis changes its password (and drops the agent's authenticated connection)
    old, new = pw.password, f"pw-{uuid.uuid4().hex}"
    pw.cli("CONFIG", "SET", "requirepass", new)
    pw.password = new
    pw.cli("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes")
    wait_until("redis_error with the old password", lambda: len(reload_events(c, "redis_error")) > errors,
               timeout=30)

    # When the operator writes the new password file (as install left it: 0640 root:dqagent) and reloads
    c.write("/etc/dqagent/redis-password", new + "\n", mode=0o640)
    assert c.systemctl("reload", "dqagent").returncode == 0

    # Then the agent reaches Redis again, in the same process, with the same workers
    wait_until("redis_ok", lambda: len(reload_events(c, "redis_ok")) > oks, timeout=30)
    assert "REDIS_PASSWORD (changed)" in reload_events(c, "reloaded")[-1]["MESSAGE"]
    assert c.unit_property("dqagent.service", "MainPID") == pid
    assert main_pids(c, worker_names(2)) == workers
    assert running_workers(c) == worker_names(2)
    # The file is readable by the agent's group only; no copy of it is made anywhere
    assert c.run(["stat", "-c", "%a %U %G", "/etc/dqagent/redis-password"]).stdout.strip() == "640 root dqagent"
    assert c.run(["cat", "/etc/dqagent/redis-password"], user="nobody", check=False).returncode != 0
    assert c.run(["cat", "/etc/dqagent/redis-password"], user="dqworker", check=False).returncode != 0
    assert not (Path(c.root) / "run/dqagent/redis-password").exists()

    # `dqagent reload` by hand as user dqagent reloads the other settings too
    c.write(ENV, settings_text(pw, MIN_PROCESSES=2, MAX_PROCESSES=3))
    by_hand = c.run([DQAGENT, "reload", "--pid", pid], user="dqagent", check=False)
    assert by_hand.returncode == 0, by_hand.stderr
    assert "MAX_PROCESSES 2 -> 3" in by_hand.stdout

    # And neither password appears in the journal, the unit's environment or the agent's command line
    visible = "\n".join([
        c.run(["journalctl", "-b", "-o", "json", "--no-pager"]).stdout,
        c.systemctl("show", "dqagent", "-p", "Environment").stdout,
        (Path(c.root) / "proc" / pid / "cmdline").read_bytes().decode(errors="replace"),
        by_hand.stdout + by_hand.stderr,
    ])
    assert old not in visible and new not in visible
    assert exposure(c, "dqagent.service") <= 1.1

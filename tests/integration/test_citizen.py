"""The loop as a systemd citizen: it counts what systemd shows, never blocks on a job, and
never fights the operator. Real systemd 252 and real Redis; `/bin/sleep infinity` workers.

The tests share one container: `fresh_agent()` kills every worker, removes the test drop-ins and
reinstalls the agent with the test's settings, and `Journal` reads only what a test produced.
"""

from __future__ import annotations

import itertools
import json
import time
from typing import Any

import pytest

from testbed.agent import QUEUE, install, main_pids, running_workers, set_backlog, worker_names
from testbed.nspawn import Container
from testbed.redis import RedisServer
from testbed.wait import wait_until

WORKER_DROPIN = "/etc/systemd/system/dramatiq-worker@.service.d/50-citizen-test.conf"
AGENT_DROPIN = "/etc/systemd/system/dqagent.service.d/50-citizen-test.conf"


@pytest.fixture(scope="module")
def host(module_container: Container, redis: RedisServer) -> tuple[Container, RedisServer]:
    """One systemd and one Redis for the module; each test resets them with `fresh_agent`."""
    return module_container, redis


class Journal:
    """The container's journal from the moment this object was made."""

    def __init__(self, c: Container) -> None:
        self.c = c
        last = c.run(["journalctl", "-o", "json", "-n", "1", "--no-pager"]).stdout.strip().splitlines()
        self.cursor = json.loads(last[-1])["__CURSOR"]

    def entries(self, unit: str = "dqagent") -> list[dict[str, Any]]:
        # Field matches are filtered here: journalctl 252 with --after-cursor and a field match missed entries.
        out = self.c.run(["journalctl", "-u", unit, "-o", "json", "--no-pager", f"--after-cursor={self.cursor}"]).stdout
        return [json.loads(line) for line in out.splitlines() if line.strip()]

    def events(self, name: str) -> list[dict[str, Any]]:
        return [e for e in self.entries() if e.get("DQAGENT_EVENT") == name]


def fresh_agent(c: Container, redis: RedisServer, worker_dropin: str = "", agent_dropin: str = "",
                **settings: Any) -> Journal:
    """No worker, no failed unit, empty Redis, then the agent installed and started with `settings`.

    Returns the journal from just before the install.
    """
    c.run(["rm", "-f", WORKER_DROPIN, AGENT_DROPIN])
    c.systemctl("daemon-reload")
    c.systemctl("kill", "--signal=KILL", "dramatiq-worker@*", check=False)  # ExecStop= sleeps too
    c.systemctl("stop", "dqagent", check=False)
    c.systemctl("stop", "dramatiq-worker@*", check=False)
    c.systemctl("reset-failed", check=False)
    # Stopped units may stay loaded as inactive/dead for a while (not garbage-collected yet): harmless.
    wait_until("no worker unit left but inactive ones", lambda: all(
        " inactive dead " in line for line in c.systemctl(
            "list-units", "dramatiq-worker@*", "--all", "--plain", "--no-legend").stdout.splitlines()))
    redis.cli("FLUSHALL")
    if worker_dropin:
        c.write(WORKER_DROPIN, f"[Service]\n{worker_dropin}\n")
    if agent_dropin:
        c.write(AGENT_DROPIN, f"[Service]\n{agent_dropin}\n")
    c.systemctl("daemon-reload")
    values: dict[str, Any] = {"MIN_PROCESSES": 1, "MAX_PROCESSES": 4, "CHECK_INTERVAL": 1}
    values.update(settings)
    log = Journal(c)
    install(c, redis, **values)
    return log


def state(c: Container, unit: str) -> str:
    return c.systemctl("show", unit, "-p", "ActiveState", "--value").stdout.strip()


def hold_four(c: Container, redis: RedisServer) -> dict[str, str]:
    """Four workers held by demand (step rule: 12 is within [4 x 2.5, 4 x 5], but 3 workers would shrink)."""
    set_backlog(redis, 16)  # > 3 x 5: one more per check up to 4
    wait_until("4 workers", lambda: running_workers(c) == worker_names(4), timeout=60)
    # 16 -> 12 in one HDEL: set_backlog's DEL would show the agent an empty queue for a moment
    log = Journal(c)
    redis.cli("HDEL", f"dramatiq:{QUEUE}.msgs", *(f"m{i}" for i in range(12, 16)))
    redis.cli("LTRIM", f"dramatiq:{QUEUE}", "0", "11")
    wait_until("a check on the new backlog", lambda: any(e["QUEUE_LENGTH"] == "12" for e in log.events("decision")),
               timeout=10)
    assert {e["TARGET"] for e in log.events("decision")} == {"4"}
    assert running_workers(c) == worker_names(4)
    return main_pids(c, worker_names(4))


def test_an_operators_rolling_restart_is_not_cancelled(host: tuple[Container, RedisServer]) -> None:
    c, redis = host
    fresh_agent(c, redis, worker_dropin="ExecStop=/bin/sleep 3")
    before = hold_four(c, redis)
    log = Journal(c)

    # When the operator restarts every worker (each takes 3 s to stop)
    done = c.systemctl("restart", "dramatiq-worker@*", check=False)

    # Then systemctl succeeds (no "Job ... canceled."), and the pool is back at 4 with new processes
    assert done.returncode == 0, done.stderr
    assert "canceled" not in done.stderr
    wait_until("4 workers again", lambda: running_workers(c) == worker_names(4), timeout=30)
    after = main_pids(c, worker_names(4))
    assert all(after[u] != before[u] for u in after)
    # and the agent neither stopped nor added a worker meanwhile
    assert log.events("scale_down") == [] and log.events("worker_stopped") == []
    assert log.events("scale_up") == []


def test_a_crash_during_restart_sec_stops_no_other_worker(host: tuple[Container, RedisServer]) -> None:
    c, redis = host
    fresh_agent(c, redis)
    before = hold_four(c, redis)
    log = Journal(c)

    # When one worker's process is SIGKILLed: systemd waits RestartSec=2s before restarting it
    c.run(["kill", "-9", before["dramatiq-worker@2.service"]])
    wait_until("auto-restart", lambda: c.unit_property("dramatiq-worker@2.service", "SubState") == "auto-restart",
               timeout=5, interval=0.1)
    assert state(c, "dramatiq-worker@2.service") == "activating"  # systemd 252: auto-restart is activating

    # Then it comes back, and no other worker was stopped or replaced
    wait_until("@2 restarted", lambda: running_workers(c) == worker_names(4)
               and c.unit_property("dramatiq-worker@2.service", "MainPID") != before["dramatiq-worker@2.service"])
    checks = Journal(c)
    wait_until("two more checks", lambda: len(checks.events("decision")) >= 2, timeout=10)
    assert {e["TARGET"] for e in checks.events("decision")} == {"4"}
    after = main_pids(c, worker_names(4))
    assert {u: p for u, p in after.items() if u != "dramatiq-worker@2.service"} == \
        {u: p for u, p in before.items() if u != "dramatiq-worker@2.service"}
    assert log.events("worker_stopped") == [] and log.events("scale_down") == []
    assert log.events("worker_failed")  # the crash is reported


def test_a_scale_up_does_not_wait_for_a_draining_worker(host: tuple[Container, RedisServer]) -> None:
    c, redis = host
    fresh_agent(c, redis, worker_dropin="ExecStop=/bin/sleep 20", GRACEFUL_SHUTDOWN_TIMEOUT=30)
    set_backlog(redis, 6)  # 6 > 1 x 5 -> 2 workers, then held (5 <= 6 <= 10)
    wait_until("2 workers", lambda: running_workers(c) == worker_names(2), timeout=30)

    # Given @2 draining for 20 s after a scale-down
    set_backlog(redis, 0)
    wait_until("@2 draining", lambda: state(c, "dramatiq-worker@2.service") == "deactivating", timeout=15)
    log = Journal(c)

    # When a burst arrives
    set_backlog(redis, 100)

    # Then a worker starts while @2 still drains, within two reads of the burst
    wait_until("a third worker", lambda: "dramatiq-worker@3.service" in running_workers(c), timeout=15)
    assert state(c, "dramatiq-worker@2.service") == "deactivating"
    entries = [e for e in log.entries() if e.get("DQAGENT_EVENT") in ("decision", "scale_up")]
    first_up = next(i for i, e in enumerate(entries) if e["DQAGENT_EVENT"] == "scale_up")
    reads = [e for e in entries[:first_up] if e["DQAGENT_EVENT"] == "decision" and int(e["QUEUE_LENGTH"]) >= 100]
    assert len(reads) <= 2, entries
    assert "stopping" in c.unit_property("dqagent.service", "StatusText")


def test_an_agent_restart_during_a_long_drain_is_ready_at_once(host: tuple[Container, RedisServer]) -> None:
    c, redis = host
    fresh_agent(c, redis, worker_dropin="ExecStop=/bin/sleep 40", agent_dropin="WatchdogSec=6s",
                GRACEFUL_SHUTDOWN_TIMEOUT=600, MAX_PROCESSES=2)
    set_backlog(redis, 6)
    wait_until("2 workers", lambda: running_workers(c) == worker_names(2), timeout=30)
    set_backlog(redis, 0)
    wait_until("@2 draining", lambda: state(c, "dramatiq-worker@2.service") == "deactivating", timeout=15)
    log = Journal(c)

    # When the agent is restarted while @2 drains (GRACEFUL_SHUTDOWN_TIMEOUT=600)
    began = time.monotonic()
    c.systemctl("restart", "dqagent")
    took = time.monotonic() - began

    # Then it is READY quickly, and neither the drain nor the watchdog (6 s) kills anything
    assert took < 15, f"systemctl restart dqagent took {took:.1f}s"
    time.sleep(14)  # more than two watchdog periods
    assert c.unit_property("dqagent.service", "ActiveState") == "active"
    assert c.unit_property("dqagent.service", "NRestarts") == "0"
    assert not [e for e in log.entries() if "atchdog" in str(e.get("MESSAGE", ""))]
    assert state(c, "dramatiq-worker@2.service") == "deactivating"  # its stop job runs on
    assert "1 running of 1 wanted (1 stopping)" in c.unit_property("dqagent.service", "StatusText")


def test_a_worker_failing_at_once_is_reported_and_its_starts_back_off(host: tuple[Container, RedisServer]) -> None:
    c, redis = host
    # PROCESS_STARTUP_DELAY=5 (the default): longer than `dqagent worker-exec` takes to exec /bin/false
    log = fresh_agent(c, redis, DRAMATIQ_COMMAND="/bin/false", MAX_PROCESSES=2, PROCESS_STARTUP_DELAY=5)
    began = time.monotonic()
    wait_until("failing in STATUS=", lambda: "dramatiq-worker@1 failing" in
               c.unit_property("dqagent.service", "StatusText"), timeout=30)
    assert c.unit_property("dqagent.service", "StatusText").startswith("0 running of 1 wanted")
    time.sleep(max(0.0, 55 - (time.monotonic() - began)))

    # The agent's start attempts are 5 s, 10 s, 20 s apart (plus the 5 s check each), not one per 1 s check
    starts = [int(e["__REALTIME_TIMESTAMP"]) / 1e6 for e in log.events("scale_up")]
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    trail = [f"{int(e['__REALTIME_TIMESTAMP']) // 10**5 % 10**5 / 10} {e['MESSAGE']}" for e in log.entries()
             if int(e.get("PRIORITY", 6)) <= 6]
    assert 2 <= len(starts) <= 5, (gaps, trail)
    assert gaps[0] >= 5 and all(later >= earlier + 3 for earlier, later in itertools.pairwise(gaps)), (gaps, trail)
    # systemd's own Restart= (RestartSec=2s) restarts it only within a check: the agent stops it after
    systemd_starts = [e for e in log.entries(unit="dramatiq-worker@1.service")
                      if str(e.get("MESSAGE", "")).startswith("Started")]
    assert len(systemd_starts) <= 3 * len(starts), len(systemd_starts)
    assert log.events("start_backoff")
    assert len(log.events("worker_failed")) <= 3  # once per distinct reason (e.g. exit-code), not per start


def test_a_stop_that_hits_timeout_stop_sec_is_a_warning_and_leaves_nothing_failed(
        host: tuple[Container, RedisServer]) -> None:
    c, redis = host
    # A worker that ignores its stop signal (sleep ignores SIGWINCH): SIGKILLed at TimeoutStopSec=2
    fresh_agent(c, redis, worker_dropin="KillSignal=SIGWINCH", GRACEFUL_SHUTDOWN_TIMEOUT=2)
    set_backlog(redis, 6)
    wait_until("2 workers", lambda: running_workers(c) == worker_names(2), timeout=30)
    log = Journal(c)
    set_backlog(redis, 0)
    wait_until("stop timeout logged", lambda: log.events("worker_stop_timeout"), timeout=30)
    (warning,) = log.events("worker_stop_timeout")
    assert warning["PRIORITY"] == "4" and warning["UNIT"] == "dramatiq-worker@2.service"
    assert warning["MESSAGE"].startswith("stop of dramatiq-worker@2.service timed out after ")
    assert warning["MESSAGE"].endswith(" s, SIGKILLed")
    wait_until("not left failed", lambda: state(c, "dramatiq-worker@2.service") == "inactive")
    assert "dramatiq-worker@2" not in c.systemctl("list-units", "--failed", "--plain", "--no-legend").stdout
    assert log.events("worker_failed") == []

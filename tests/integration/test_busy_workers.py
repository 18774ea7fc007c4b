"""Which worker is busy, in the real-systemd bench with real Redis and real Dramatiq workers that opt in
(`broker.add_middleware(WorkerReport())` in the sample app, `DQTEST_REPORT=1`).

Durations are scaled down from the issue's (tasks of 15-75 s, a 120 s task, minutes of hang detection) so the
file stays near two minutes; the ratios that matter are kept: the long tasks (30 s) outlast Dramatiq's
`--worker-shutdown-timeout` (5 s), so stopping their worker would interrupt them and Dramatiq would deliver
them again; the busy worker's task (25 s) outlasts WORKER_HUNG_AFTER (6 s).

- Four workers, the two long tasks running on one of them (@4, the number today's order stops first), demand
  falling to MIN_PROCESSES=1: every stop hits an idle worker (checked from the workers' own journal lines:
  which tasks ran where and when), each stop is shorter than `--worker-shutdown-timeout` and Dramatiq's own
  shutdown in it takes under 1 s (an idle worker's, see the test), no task runs twice.
- A worker whose Dramatiq process is frozen (SIGSTOP) is restarted within WORKER_HUNG_AFTER (+ one check);
  a worker running a task longer than WORKER_HUNG_AFTER is not.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from datetime import datetime

import pytest

from testbed.agent import APP_DIR, PYTHON, QUEUE, dqagent, journal, running_workers, settings_text
from testbed.nspawn import Container
from testbed.redis import RedisServer
from testbed.wait import wait_until
from tests.integration.test_reliability import dramatiq_ready, install_real

LONG_MS = 30_000
#: Dramatiq's --worker-shutdown-timeout: how long a stopping worker waits for its running tasks.
SHUTDOWN_TIMEOUT_S = 5
COMMAND = (f"{PYTHON} -m dramatiq --processes 1 --threads 2 --worker-shutdown-timeout {SHUTDOWN_TIMEOUT_S * 1000}"
           " dqtestapp")
SETTINGS = dict(DRAMATIQ_COMMAND=COMMAND, MAX_PROCESSES=4, GRACEFUL_SHUTDOWN_TIMEOUT=10, PROCESS_STARTUP_DELAY=1)


@pytest.fixture(scope="module")
def busy_bench(module_container: Container, redis: RedisServer) -> Iterator[tuple[Container, RedisServer]]:
    c = module_container
    install_real(c, redis, now=False, MIN_PROCESSES=4, **SETTINGS)
    # dramatiq_worker_timeout=100 (Dramatiq's own variable, milliseconds; default 1000): its consumer and worker
    # threads poll 10 times a second, so an idle worker's stop takes about 1 s instead of 3 (README, "Which
    # worker is busy")
    c.write("/etc/dqagent/worker.env", f"DQTEST_REDIS_URL={redis.url}\nDQTEST_QUEUE={QUEUE}\nDQTEST_REPORT=1\n"
                                        "dramatiq_worker_timeout=100\n")
    yield c, redis


def apply(c: Container) -> None:
    """The settings just written, applied: a reload, or a start when the agent is not running (each test stands
    alone: under pytest-xdist a test may run before the one that installs and starts the agent)."""
    active = c.systemctl("is-active", "dqagent", check=False).stdout.strip() == "active"
    c.systemctl("reload" if active else "start", "dqagent")


def enqueue_long(c: Container, redis: RedisServer, ids: list[str], ms: int) -> None:
    code = (f"import sys; sys.path.insert(0, {str(APP_DIR)!r}); import dqtestapp\n"
            f"for i in {ids!r}: dqtestapp.long.send(i, {ms})")
    c.run([PYTHON, "-c", code], env={"DQTEST_REDIS_URL": redis.url, "DQTEST_QUEUE": QUEUE})


def task_lines(c: Container, unit: str) -> list[tuple[float, str, str]]:
    """(time, task id, start|end) from the worker's own journal lines."""
    out = []
    for r in journal(c, unit):
        # (two threads' lines can reach the journal glued together: `task a starttask b start`)
        for m in re.finditer(r"task (\S+?) (start|end)", str(r.get("MESSAGE", ""))):
            out.append((int(r["__REALTIME_TIMESTAMP"]) / 1e6, m.group(1), m.group(2)))
    return out


def running_at(c: Container, unit: str, t: float) -> set[str]:
    """The tasks `unit` was running at wall-clock time `t`, by its journal."""
    now: set[str] = set()
    for at, task, what in task_lines(c, unit):
        if at <= t:
            (now.add if what == "start" else now.discard)(task)
    return now


def reports(c: Container, instance: str) -> str:
    return c.run(["sh", "-c", f"cat /run/dramatiq-worker/{instance}/*.json 2>/dev/null"], check=False).stdout


def pid1_time(r: dict[str, object]) -> float:
    """When systemd logged a journal entry (its own clock, not journald's receive time, which load delays)."""
    return int(str(r.get("_SOURCE_REALTIME_TIMESTAMP") or r["__REALTIME_TIMESTAMP"])) / 1e6


#: Dramatiq's own log line, with the time its process wrote it (`[2026-12-07 03:55:30,983] [PID 113] ...`).
DRAMATIQ_LINE = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})\] .*\[dramatiq\.worker\.Worker\] \[INFO\] "
                           r"(Shutting down\.\.\.|Worker has been shut down\.)")


def stop_took(c: Container, unit: str, since: float) -> tuple[float, float] | None:
    """(systemd's stop, Dramatiq's shutdown) of `unit`'s first stop after `since`, in seconds; None before both
    ended. systemd's: from its "Stopping" to its "Stopped" line, by the times PID 1 logged them (the unit is
    unloaded once inactive, so its own timestamps are gone). Dramatiq's: its `Worker.stop()`, from "Shutting
    down..." to "Worker has been shut down.", by the times in its own lines: the joins of its worker threads
    (a busy one is waited for up to --worker-shutdown-timeout) and consumers, each waking within
    dramatiq_worker_timeout."""
    entries = [r for r in journal(c, unit) if int(r["__REALTIME_TIMESTAMP"]) / 1e6 >= since]
    pid1 = [(pid1_time(r), str(r.get("MESSAGE", ""))) for r in entries if r.get("_PID") == "1"]
    began = next((t for t, m in pid1 if m.startswith("Stopping ")), None)
    ended = next((t for t, m in pid1 if m.startswith("Stopped ")), None)
    own = [(datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f"), m.group(2)) for r in entries
           if (m := DRAMATIQ_LINE.match(str(r.get("MESSAGE", ""))))]
    down = next((t for t, m in own if m.startswith("Shutting")), None)
    done = next((t for t, m in own if m.startswith("Worker has")), None)
    if began is None or ended is None or down is None or done is None:
        return None
    return ended - began, (done - down).total_seconds()


def test_scale_down_stops_idle_workers_and_interrupts_no_task(busy_bench: tuple[Container, RedisServer]) -> None:
    c, redis = busy_bench
    # (a rerun starts from scratch: no agent, no worker, an empty Redis, MIN_PROCESSES=4 again)
    c.systemctl("stop", "dqagent.service", "dramatiq-worker@*", check=False)
    redis.cli("FLUSHALL")
    c.write("/etc/dqagent/dqagent.env", settings_text(redis, MIN_PROCESSES=4, **SETTINGS,
                                                       WORKER_DIRECTORY=str(APP_DIR)))
    # Given @4 started alone and running the two long tasks (both its threads)
    c.systemctl("start", "dramatiq-worker@4.service")
    wait_until("@4's Dramatiq ready", lambda: dramatiq_ready(c, "dramatiq-worker@4.service"), timeout=60)
    ids = ["long-a", "long-b"]
    enqueue_long(c, redis, ids, LONG_MS)
    try:
        wait_until("both long tasks running on @4, by its report and its journal",
                   lambda: '"running": 2' in reports(c, "4")
                   and running_at(c, "dramatiq-worker@4.service", time.time()) == set(ids), timeout=60)
    except AssertionError as exc:  # say what the worker showed
        tail = [str(r.get("MESSAGE"))[:160] for r in journal(c, "dramatiq-worker@4.service")][-10:]
        raise AssertionError(f"{exc}; report {reports(c, '4')!r}; journal {tail}") from None
    # And the agent running four workers (it adopts @4 and starts @1..@3, idle)
    dqagent(c, "install", "--now")
    four = [f"dramatiq-worker@{n}.service" for n in range(1, 5)]
    wait_until("4 workers reporting", lambda: running_workers(c) == four
               and all('"pid"' in reports(c, str(n)) for n in range(1, 5)), timeout=90)
    assert '"running": 2' in reports(c, "4")
    # When demand falls below what 4 workers need and MIN_PROCESSES allows going down to 1
    began = time.time()
    c.write("/etc/dqagent/dqagent.env", settings_text(redis, MIN_PROCESSES=1, **SETTINGS,
                                                       WORKER_DIRECTORY=str(APP_DIR)))
    c.systemctl("reload", "dqagent")
    try:
        wait_until("down to @4 alone", lambda: running_workers(c) == ["dramatiq-worker@4.service"], timeout=60)
    except AssertionError as exc:  # say what the agent decided
        lines = [(str(r.get("MESSAGE"))[:300], r.get("STOP_WHY")) for r in journal(c, "dqagent")
                 if "decision: 1 -> 1" not in str(r.get("MESSAGE"))][-25:]
        raise AssertionError(f"{exc}; workers {running_workers(c)}; agent: {lines}") from None
    # Then every stop hit an idle worker: the decision line names it and why, and its own journal agrees
    downs = [r for r in journal(c, "dqagent", "DQAGENT_EVENT=scale_down")
             if int(r["__REALTIME_TIMESTAMP"]) / 1e6 >= began]
    stopped = [n for r in downs for n in r["STOP_UNITS"].split(",")]
    assert sorted(stopped) == ["1", "2", "3"], downs
    assert all("idle" in r["STOP_WHY"] and r["ALL_BUSY"] == "0" for r in downs), downs
    for r in downs:
        for n in r["STOP_UNITS"].split(","):
            at = int(r["__REALTIME_TIMESTAMP"]) / 1e6
            assert not running_at(c, f"dramatiq-worker@{n}.service", at), (n, at)
    # And each stop was quick because its worker was idle. Dramatiq's own shutdown (its lines' times) takes under
    # 1 s: measured 0.05-0.17 s with dramatiq_worker_timeout=100 in worker.env, 1.5-1.8 s with Dramatiq's default
    # of 1000 ms (its threads each finish a 1 s poll), and a busy worker's lasts until its tasks end or
    # --worker-shutdown-timeout. systemd's whole stop (its own lines' times) is shorter than that timeout, which a
    # worker stopped mid-task waits out alone: measured 1.1-2.2 s idle, loaded or not, as Dramatiq adds up to 1 s
    # before it starts shutting down (its worker process checks for the signal once a second) and 1 s after (its
    # main process's log relay waits out a 1 s poll), whatever the worker was doing.
    wait_until(f"{stopped} stopped", lambda: all(stop_took(c, f"dramatiq-worker@{n}.service", began) is not None
                                             for n in stopped), timeout=30)
    took = {n: stop_took(c, f"dramatiq-worker@{n}.service", began) or (0.0, 0.0) for n in stopped}
    print("stops (systemd, dramatiq) took", {n: (round(t[0], 2), round(t[1], 3)) for n, t in took.items()})
    assert all(whole < SHUTDOWN_TIMEOUT_S and own < 1.0 for whole, own in took.values()), took
    # And no task was interrupted: both long tasks end on @4, each started once
    wait_until("both long tasks done", lambda: set(redis.cli("SMEMBERS", "dqtest:done").split()) >= set(ids),
               timeout=LONG_MS / 1000 + 30)
    assert {i: redis.cli("HGET", "dqtest:starts", i) for i in ids} == {"long-a": "1", "long-b": "1"}
    assert {t for _, t, what in task_lines(c, "dramatiq-worker@4.service") if what == "end"} == set(ids)


def test_a_frozen_worker_is_restarted_a_busy_one_is_not(busy_bench: tuple[Container, RedisServer]) -> None:
    c, redis = busy_bench
    hung_after = 6
    # Given two workers reporting, WORKER_HUNG_AFTER=6, one of them running a task of 25 s
    c.write("/etc/dqagent/dqagent.env", settings_text(redis, MIN_PROCESSES=2, WORKER_HUNG_AFTER=hung_after,
                                                       **SETTINGS, WORKER_DIRECTORY=str(APP_DIR)))
    apply(c)
    wait_until("2 workers reporting", lambda: len(running_workers(c)) == 2
               and all('"pid"' in reports(c, u.split("@")[1].removesuffix(".service")) for u in running_workers(c)),
               timeout=60)
    enqueue_long(c, redis, ["busy-1"], 25_000)
    wait_until("one worker busy", lambda: sum('"running": 1' in reports(c, u.split("@")[1].removesuffix(".service"))
                                              for u in running_workers(c)) == 1, timeout=30)
    units = running_workers(c)
    busy_unit = next(u for u in units if '"running": 1' in reports(c, u.split("@")[1].removesuffix(".service")))
    idle_unit = next(u for u in units if u != busy_unit)
    busy_pid = c.unit_property(busy_unit, "MainPID")
    # Then `dqagent status` shows per worker what it runs, holds and when it last reported (--json the same)
    report = json.loads(dqagent(c, "status", "--json").stdout)
    listed = {w["unit"]: w["report"] for w in report["process_list"]}
    assert listed[busy_unit]["running"] == 1 and listed[busy_unit]["state"] == "busy", listed
    assert listed[idle_unit]["running"] == 0 and listed[idle_unit]["state"] == "idle", listed
    assert all(0 <= listed[u]["last_seen_s"] < 3 and listed[u]["prefetched"] == 0 and not listed[u]["hung"]
               for u in (busy_unit, idle_unit)), listed  # (a unit still stopping from before has no report: None)
    text = dqagent(c, "status").stdout
    assert re.search(rf"{re.escape(busy_unit)} .* busy: 1 running, 0 prefetched, seen [0-9.]+s ago", text), text
    # When the idle worker's Dramatiq worker process (the main PID's child) is frozen
    child = c.run(["pgrep", "-P", c.unit_property(idle_unit, "MainPID")]).stdout.split()[0]
    frozen_at = time.monotonic()
    c.run(["kill", "-STOP", child])
    # Then the agent logs it as hung within WORKER_HUNG_AFTER (+ a check) and restarts it: a new main PID
    old_pid = c.unit_property(idle_unit, "MainPID")
    wait_until("worker_hung logged", lambda: any(r.get("UNIT") == idle_unit for r in
                                                 journal(c, "dqagent", "DQAGENT_EVENT=worker_hung")),
               timeout=hung_after + 10, interval=0.5)
    detected = time.monotonic() - frozen_at
    wait_until("restarted", lambda: c.unit_property(idle_unit, "MainPID") not in ("0", "", old_pid)
               and c.unit_property(idle_unit, "ActiveState") == "active", timeout=40)
    restarted = time.monotonic() - frozen_at
    print(f"frozen worker: hung logged after {detected:.1f}s, running again after {restarted:.1f}s")
    assert detected < hung_after + 4, detected
    # And the busy worker, beating through its 25 s task, was never restarted
    wait_until("the busy task done", lambda: "busy-1" in redis.cli("SMEMBERS", "dqtest:done").split(), timeout=40)
    assert c.unit_property(busy_unit, "MainPID") == busy_pid
    assert not any(r.get("UNIT") == busy_unit for r in journal(c, "dqagent", "DQAGENT_EVENT=worker_hung"))
    assert redis.cli("HGET", "dqtest:starts", "busy-1") == "1"


def test_a_unit_of_two_dramatiq_processes_reports_each_and_the_agent_adds_them(
        busy_bench: tuple[Container, RedisServer]) -> None:
    c, redis = busy_bench
    # Given one worker unit running Dramatiq with --processes 2 (2 threads each): its next start takes the
    # reloaded command (worker-exec reads the settings at each start), here an operator's restart
    two = COMMAND.replace("--processes 1", "--processes 2")
    c.write("/etc/dqagent/dqagent.env", settings_text(redis, MIN_PROCESSES=1, **{**SETTINGS, "MAX_PROCESSES": 1},
                                                       WORKER_DIRECTORY=str(APP_DIR)).replace(COMMAND, two))
    apply(c)
    wait_until("one worker", lambda: len(running_workers(c)) == 1, timeout=60)
    (unit,) = running_workers(c)
    instance = unit.split("@")[1].removesuffix(".service")
    c.systemctl("restart", unit)
    files = lambda: c.run(["sh", "-c", f"ls /run/dramatiq-worker/{instance}/"], check=False).stdout.split()  # noqa: E731
    wait_until("two reports, one per process", lambda: len([f for f in files() if f.endswith(".json")]) == 2,
               timeout=60)
    # When three tasks run on it
    enqueue_long(c, redis, ["p-1", "p-2", "p-3"], 15_000)

    def seen() -> dict[str, object]:
        listed = json.loads(dqagent(c, "status", "--json").stdout)["process_list"]
        return next(w["report"] or {} for w in listed if w["unit"] == unit)

    # Then `dqagent status` adds the two processes' reports: the 3 tasks running or prefetched on the unit (one
    # process may fetch all three: 2 running, 1 waiting for a thread), from 2 processes
    wait_until("3 held over 2 processes", lambda: (r := seen()).get("processes") == 2
               and r.get("running", 0) >= 2 and r.get("running", 0) + r.get("prefetched", 0) == 3,  # type: ignore[operator]
               timeout=30)
    wait_until("the tasks done", lambda: {"p-1", "p-2", "p-3"} <= set(redis.cli("SMEMBERS", "dqtest:done").split()),
               timeout=40)

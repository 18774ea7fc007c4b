"""RabbitMQ as the broker, in the real-systemd bench: a real rabbitmq-server (Debian's, started by the bench on
loopback), real Dramatiq workers on Dramatiq's own `RabbitmqBroker` (the sample app; it records what it processed
in a Redis, where the tests count), the agent installed as on a host with `RABBITMQ_URL` and the password in
/etc/dqagent/rabbitmq-password.

One server for the file (Erlang boots in seconds), a virtual host per test, a fresh container per test.
"""

from __future__ import annotations

import json
import time
import urllib.request
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from testbed.agent import (
    APP_DIR,
    PYTHON,
    QUEUE,
    dqagent,
    install,
    journal,
    main_pids,
    running_workers,
    sigkill_worker,
    worker_names,
)
from testbed.nspawn import Container
from testbed.rabbitmq import RabbitServer
from testbed.redis import RedisServer, free_port
from testbed.wait import wait_until
from tests.integration.test_hardening_secrets import _everything_visible
from tests.integration.test_reliability import done, dramatiq_command

THREADS = 2
PREFETCH = 2 * THREADS


@pytest.fixture(scope="module")
def rabbit() -> Iterator[RabbitServer]:
    r = RabbitServer(management=True)
    try:
        yield r
    finally:
        r.stop()


def install_rabbit(c: Container, rabbit: RabbitServer, redis: RedisServer, vhost: str, management: bool = True,
                   **overrides: Any) -> None:
    """Install dqagent on RabbitMQ: the password only in /etc/dqagent/rabbitmq-password (root's file, which
    install makes 0640 root:dqagent); the workers' app gets its broker URL from worker.env."""
    c.write("/etc/dqagent/rabbitmq-password", rabbit.password + "\n", mode=0o600)
    c.write("/etc/dqagent/worker.env", f"DQTEST_RABBITMQ_URL={rabbit.url(vhost, password=True)}\n"
            f"DQTEST_REDIS_URL={redis.url}\nDQTEST_QUEUE={QUEUE}\n")
    settings: dict[str, Any] = {
        "RABBITMQ_URL": rabbit.url(vhost), "RABBITMQ_TIMEOUT": 3,
        "RABBITMQ_MANAGEMENT_URL": rabbit.management_url if management else "",
        "DRAMATIQ_COMMAND": dramatiq_command(THREADS), "WORKER_DIRECTORY": str(APP_DIR),
        "MIN_PROCESSES": 1, "MAX_PROCESSES": 4, "CHECK_INTERVAL": 1,
    }
    settings.update(overrides)
    install(c, redis, **settings)


def enqueue(c: Container, rabbit: RabbitServer, redis: RedisServer, vhost: str, n: int, ms: int,
            delay_ms: int | None = None) -> list[str]:
    """Enqueue through Dramatiq's RabbitmqBroker (a producer in the container, as an application would)."""
    code = (f"import sys; sys.path.insert(0, {str(APP_DIR)!r}); import dqtestapp; "
            f"print('\\n'.join(dqtestapp.enqueue_burst({n}, {ms}, delay_ms={delay_ms!r})))")
    env = {"DQTEST_RABBITMQ_URL": rabbit.url(vhost, password=True), "DQTEST_REDIS_URL": redis.url,
           "DQTEST_QUEUE": QUEUE}
    return c.run([PYTHON, "-c", code], env=env, timeout=300).stdout.split()


def wait_workers(c: Container, n: int, timeout: float = 60) -> None:
    """Until exactly `n` workers run (any instance numbers); on a timeout, what systemd and the agent said."""
    try:
        wait_until(f"{n} workers", lambda: len(running_workers(c)) == n, timeout=timeout)
    except AssertionError:
        print(c.systemctl("list-units", "dramatiq-worker@*", "--all", "--no-pager").stdout)
        print(c.run(["journalctl", "-u", "dqagent", "--no-pager", "-n", "60", "-o", "short-monotonic"]).stdout)
        raise


def reset(redis: RedisServer) -> None:
    redis.cli("DEL", "dqtest:done", "dqtest:started", "dqtest:count")


def status_json(c: Container) -> dict[str, Any]:
    return dict(json.loads(dqagent(c, "status", "--json").stdout))


def scrape(port: int) -> dict[tuple[str, str], float]:
    """`dqagent_queue_messages` (by state) and `dqagent_queue_consumers` of queue dqtest: {(family, state): value}."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    out = {}
    for line in text.splitlines():
        if f'queue="{QUEUE}"' not in line:
            continue
        name = line.split("{", 1)[0]
        state = line.split('state="', 1)[1].split('"', 1)[0] if 'state="' in line else ""
        out[(name, state)] = float(line.rsplit(" ", 1)[1])
    return out


def test_a_burst_scales_up_and_back_and_every_view_shows_rabbitmqctls_figures(
        fresh_container: Container, rabbit: RabbitServer, redis: RedisServer) -> None:
    c, port, vhost = fresh_container, free_port(), rabbit.add_vhost(f"burst-{uuid.uuid4().hex[:6]}")
    reset(redis)
    install_rabbit(c, rabbit, redis, vhost, METRICS_ADDRESS=f"127.0.0.1:{port}")
    wait_workers(c, 1)
    # The agent's credential is the file's: not in the unit's environment, nor on any command line
    assert rabbit.password not in c.run(["systemctl", "show", "dqagent", "-p", "Environment"]).stdout
    assert rabbit.password not in c.run(["ps", "-eo", "args"]).stdout

    # When a burst of 600 tasks of 50 ms arrives (one worker of 2 threads: 40/s)
    ids = enqueue(c, rabbit, redis, vhost, 600, 50)
    # Then the pool grows to MAX (4), every task is processed, and it comes back to MIN (1)
    wait_workers(c, 4)
    wait_until("all 600 processed", lambda: set(ids) <= done(redis), timeout=120)
    wait_workers(c, 1)
    ups = [int(r["TARGET"]) for r in journal(c, "dqagent", "DQAGENT_EVENT=scale_up")]
    assert max(ups) == 4

    # When tasks that run for a minute fill the pool (4 workers x 2 threads run 8; each prefetches 4), with 10
    # delayed messages (due in 10 minutes: the workers hold them unacknowledged in memory, from Q.DQ)
    enqueue(c, rabbit, redis, vhost, 10, 1000, delay_ms=600_000)
    enqueue(c, rabbit, redis, vhost, 40, 60_000)
    wait_workers(c, 4)

    # Then status --json and /metrics show what rabbitmqctl shows, once the figures are still
    def agree() -> bool:
        listed = rabbit.list_queues(vhost)
        ready, unacked, consumers = listed[QUEUE]
        dq_ready, dq_unacked, _ = listed[f"{QUEUE}.DQ"]
        q = status_json(c)["queues"][QUEUE]
        m = scrape(port)
        want = {"ready": ready, "in_flight": unacked, "delayed": dq_ready + dq_unacked,
                "dead_lettered": listed[f"{QUEUE}.XQ"][0], "consumers": consumers}
        got_status = {k: q[k] for k in want}
        got_metrics = {**{s: m.get(("dqagent_queue_messages", s)) for s in ("ready", "in_flight", "delayed",
                                                                            "dead_lettered")},
                       "consumers": m.get(("dqagent_queue_consumers", ""))}
        print(want, got_status, got_metrics)
        return bool(want == got_status == got_metrics and q["in_flight_known"] and consumers == 4)
    wait_until("status, /metrics and rabbitmqctl agree", agree, timeout=30, interval=1)
    listed = rabbit.list_queues(vhost)
    assert listed[QUEUE] == (40 - 4 * PREFETCH, 4 * PREFETCH, 4)  # ready, unacked (running + prefetched), consumers
    assert listed[f"{QUEUE}.DQ"][:2] == (0, 10)  # the delayed ones, held by the workers
    # And the delayed messages are not load: the decision's queue length is Q's outstanding only (40)
    last = journal(c, "dqagent", "DQAGENT_EVENT=decision")[-1]
    assert int(last["QUEUE_LENGTH"]) == 40, last


def redis_up_metric(port: int) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    return float(next(line for line in text.splitlines() if line.startswith("dqagent_redis_up ")).split()[1])


def test_rabbitmq_stopped_and_back_then_a_wrong_password(fresh_container: Container, rabbit: RabbitServer,
                                                         redis: RedisServer) -> None:
    c, port, vhost = fresh_container, free_port(), rabbit.add_vhost(f"down-{uuid.uuid4().hex[:6]}")
    # Given an agent on RabbitMQ with 2 workers (MIN_PROCESSES=2; /bin/sleep: Dramatiq is not under test here)
    install_rabbit(c, rabbit, redis, vhost, MIN_PROCESSES=2, DRAMATIQ_COMMAND="/bin/sleep infinity",
                   METRICS_ADDRESS=f"127.0.0.1:{port}")
    wait_until("two workers", lambda: running_workers(c) == worker_names(2), timeout=60)
    pids, agent_pid = main_pids(c, worker_names(2)), c.unit_property("dqagent.service", "MainPID")

    # When RabbitMQ stops
    rabbit.stop_server()
    try:
        # Then STATUS=, the journal and /metrics say so, and the workers are kept
        wait_until("STATUS= says rabbitmq unavailable",
                   lambda: "rabbitmq unavailable (RabbitMQ at" in c.unit_property("dqagent.service", "StatusText"),
                   timeout=20)
        assert redis_up_metric(port) == 0
        errors = journal(c, "dqagent", "DQAGENT_EVENT=redis_error")
        assert len(errors) == 1 and errors[0]["ERROR"].startswith(f"RabbitMQ at {rabbit.url(vhost)}: "), errors
        time.sleep(3)
        assert main_pids(c, worker_names(2)) == pids
    finally:
        # When it starts again (same port, same data)
        rabbit.start()
    # Then the agent reconnects by itself (same PID), logs the recovery, and STATUS= is normal again
    wait_until("redis_ok logged", lambda: journal(c, "dqagent", "DQAGENT_EVENT=redis_ok"), timeout=45)
    wait_until("STATUS= normal", lambda: "running of" in c.unit_property("dqagent.service", "StatusText"), timeout=10)
    assert redis_up_metric(port) == 1
    assert c.unit_property("dqagent.service", "MainPID") == agent_pid
    assert main_pids(c, worker_names(2)) == pids

    # When RabbitMQ stalls (its processes stopped: connections open, nothing answers) past RABBITMQ_TIMEOUT (3 s)
    rabbit.pause()
    try:
        wait_until("STATUS= says no answer", lambda: "no answer within 3 s" in c.unit_property(
            "dqagent.service", "StatusText"), timeout=30)
        assert main_pids(c, worker_names(2)) == pids
    finally:
        rabbit.resume()
    # Then it recovers as well
    wait_until("recovered again", lambda: len(journal(c, "dqagent", "DQAGENT_EVENT=redis_ok")) == 2, timeout=45)

    # When the password file holds a wrong password and the agent reloads
    wrong = f"wrong-{uuid.uuid4().hex}"
    c.write("/etc/dqagent/rabbitmq-password", wrong + "\n", mode=0o600)
    c.run(["chgrp", "dqagent", "/etc/dqagent/rabbitmq-password"])
    c.run(["chmod", "0640", "/etc/dqagent/rabbitmq-password"])
    c.systemctl("reload", "dqagent")
    # Then one clear line in the journal, and in `dqagent check`; the workers stay
    refused = f"RabbitMQ at {rabbit.url(vhost)}: authentication refused for user 'dq'"
    wait_until("the refusal logged", lambda: any(r["ERROR"] == refused for r in journal(
        c, "dqagent", "DQAGENT_EVENT=redis_error")), timeout=20)
    check = dqagent(c, "check", check=False)
    assert check.returncode == 78
    assert [line for line in check.stdout.splitlines() if "RabbitMQ" in line] == [
        f"FAIL: {refused}; fix: check RABBITMQ_URL (user, virtual host) and RABBITMQ_MANAGEMENT_URL in the settings "
        "file and the password in /etc/dqagent/rabbitmq-password"]
    assert main_pids(c, worker_names(2)) == pids
    # And neither password appears in any journal line, Environment= or command line
    seen = _everything_visible(c)
    assert wrong not in seen and rabbit.password not in seen


def test_no_message_lost_when_workers_die_and_delayed_messages_wait_without_load(
        fresh_container: Container, rabbit: RabbitServer, redis: RedisServer) -> None:
    c, vhost = fresh_container, rabbit.add_vhost(f"loss-{uuid.uuid4().hex[:6]}")
    reset(redis)
    install_rabbit(c, rabbit, redis, vhost, MAX_PROCESSES=3, DRAMATIQ_COMMAND=dramatiq_command(4))
    wait_until("one worker", lambda: running_workers(c) == worker_names(1), timeout=60)

    # Given 30 delayed messages, due in 8 s: the worker holds them unacknowledged until then
    sent = time.monotonic()  # before the producer runs: each message is due at least 8 s after this
    delayed = enqueue(c, rabbit, redis, vhost, 30, 10, delay_ms=8000)
    wait_until("the worker holds them", lambda: rabbit.list_queues(vhost)[f"{QUEUE}.DQ"][1] == 30, timeout=10)
    # Then, while they wait, they are not load: the pool stays at 1 and the decisions count 0
    marker = len(journal(c, "dqagent", "DQAGENT_EVENT=decision"))
    while time.monotonic() - sent < 7:
        assert running_workers(c) == worker_names(1)
        time.sleep(0.5)
    waiting = journal(c, "dqagent", "DQAGENT_EVENT=decision")[marker:]
    assert waiting and {int(r["QUEUE_LENGTH"]) for r in waiting} == {0}, waiting
    assert not done(redis) & set(delayed)
    # And after their delay they are processed
    wait_until("the delayed ones processed", lambda: set(delayed) <= done(redis), timeout=30)
    assert time.monotonic() - sent >= 8

    # When 2,000 messages arrive and two workers are SIGKILLed while they hold unacknowledged messages
    ids = enqueue(c, rabbit, redis, vhost, 2000, 20)
    wait_until("3 workers", lambda: running_workers(c) == worker_names(3), timeout=60)
    for unit in ("dramatiq-worker@2.service", "dramatiq-worker@3.service"):
        wait_until(f"{unit} holds messages", lambda: rabbit.list_queues(vhost)[QUEUE][1] > 0, timeout=20)
        sigkill_worker(c, unit)
        time.sleep(1)
    # Then every message is processed (RabbitMQ re-queued what the dead held) and nothing is left in any queue
    wait_until("all 2,000 processed", lambda: set(ids) <= done(redis), timeout=180)
    wait_until("every queue empty", lambda: all(v[:2] == (0, 0) for v in rabbit.list_queues(vhost).values()),
               timeout=30)
    counts = redis.cli("HVALS", "dqtest:count").split()
    assert len(counts) == 2030  # each message at least once (a killed task runs again: at-least-once)


def test_without_the_management_api_in_flight_is_estimated_and_said_so(
        fresh_container: Container, rabbit: RabbitServer, redis: RedisServer) -> None:
    c, vhost = fresh_container, rabbit.add_vhost(f"nomgmt-{uuid.uuid4().hex[:6]}")
    reset(redis)
    install_rabbit(c, rabbit, redis, vhost, management=False)
    wait_until("one worker", lambda: running_workers(c) == worker_names(1), timeout=60)
    # Then `dqagent check` says what the agent cannot see and how it compensates
    check = dqagent(c, "check", check=False).stdout
    assert "ok: no RABBITMQ_MANAGEMENT_URL: the messages workers hold unacknowledged (in flight" in check, check
    # When tasks of 30 s fill the workers (2 threads, prefetch 4 each)
    enqueue(c, rabbit, redis, vhost, 40, 30_000)
    # Then the pool still grows (in flight estimated as consumers x prefetch while messages are ready)
    wait_workers(c, 4)

    def estimated() -> bool:
        ready, unacked, consumers = rabbit.list_queues(vhost)[QUEUE]
        q = status_json(c)["queues"][QUEUE]
        return bool(ready > 0 and q["ready"] == ready and q["consumers"] == consumers == 4
                    and q["in_flight"] == consumers * PREFETCH == unacked and q["in_flight_known"] is False)
    wait_until("status shows the estimate, equal to RabbitMQ's count while messages wait", estimated, timeout=20)
    text = dqagent(c, "status").stdout
    assert "(estimated: consumers x prefetch" in text and "oldest waiting unknown (RabbitMQ)" in text, text

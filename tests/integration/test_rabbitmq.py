"""RabbitMQ as the broker, in the real-systemd bench: a real rabbitmq-server (Debian's, started by the bench on
loopback), real Dramatiq workers on Dramatiq's own `RabbitmqBroker` (the sample app; it records what it processed
in a Redis, where the tests count), the agent installed as on a host with `RABBITMQ_URL` and the password in
/etc/dqagent/rabbitmq-password.

One server for the file (Erlang boots in seconds), a virtual host per test, a fresh container per test.
"""

from __future__ import annotations

import json
import urllib.request
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from testbed.agent import APP_DIR, PYTHON, QUEUE, dqagent, install, journal, running_workers, worker_names
from testbed.nspawn import Container
from testbed.rabbitmq import RabbitServer
from testbed.redis import RedisServer, free_port
from testbed.wait import wait_until

THREADS = 2
PREFETCH = 2 * THREADS


@pytest.fixture(scope="module")
def rabbit() -> Iterator[RabbitServer]:
    r = RabbitServer(management=True)
    try:
        yield r
    finally:
        r.stop()


def dramatiq_command(threads: int = THREADS) -> str:
    return f"{PYTHON} -m dramatiq --processes 1 --threads {threads} dqtestapp"


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
        "DRAMATIQ_COMMAND": dramatiq_command(), "WORKER_DIRECTORY": str(APP_DIR),
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


def done(redis: RedisServer) -> set[str]:
    return set(redis.cli("SMEMBERS", "dqtest:done").split())


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
    try:
        wait_until("one worker", lambda: running_workers(c) == worker_names(1), timeout=60)
    except AssertionError:
        print(c.run(["journalctl", "--no-pager", "-n", "80"]).stdout)
        raise
    # The agent's credential is the file's: not in the unit's environment, nor on any command line
    assert rabbit.password not in c.run(["systemctl", "show", "dqagent", "-p", "Environment"]).stdout
    assert rabbit.password not in c.run(["ps", "-eo", "args"]).stdout

    # When a burst of 600 tasks of 50 ms arrives (one worker of 2 threads: 40/s)
    ids = enqueue(c, rabbit, redis, vhost, 600, 50)
    # Then the pool grows to MAX (4), every task is processed, and it comes back to MIN (1)
    wait_until("4 workers", lambda: running_workers(c) == worker_names(4), timeout=60)
    wait_until("all 600 processed", lambda: set(ids) <= done(redis), timeout=120)
    wait_until("back to 1 worker", lambda: running_workers(c) == worker_names(1), timeout=60)
    ups = [int(r["TARGET"]) for r in journal(c, "dqagent", "DQAGENT_EVENT=scale_up")]
    assert max(ups) == 4

    # When tasks that run for a minute fill the pool (4 workers x 2 threads run 8; each prefetches 4), with 10
    # delayed messages (due in 10 minutes: the workers hold them unacknowledged in memory, from Q.DQ)
    enqueue(c, rabbit, redis, vhost, 10, 1000, delay_ms=600_000)
    enqueue(c, rabbit, redis, vhost, 40, 60_000)
    wait_until("4 workers", lambda: running_workers(c) == worker_names(4), timeout=60)

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

"""The demand probe against a real redis-server and real Dramatiq brokers, consumers and workers.

No container: these need only `redis-server` (started on a random loopback port per test).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

import dramatiq
import dramatiq.broker
import pytest
from dramatiq.brokers.redis import RedisBroker

from dqagent.broker.redis import HEARTBEAT_TIMEOUT_MS, RedisDemandProbe
from dqagent.core.demand import Demand
from dqagent.errors import BrokerError
from dqagent.settings.config import QueueMetric, Settings, parse_settings
from testbed.agent import APP_DIR, REPO
from testbed.redis import RedisServer
from testbed.wait import wait_until

T = TypeVar("T")


def settings_for(url: str, queues: str = "qa", timeout_s: float = 2, **extra: str) -> Settings:
    return parse_settings({"REDIS_URL": url, "DRAMATIQ_QUEUE_NAME": queues, "REDIS_TIMEOUT": str(timeout_s),
                           **extra})


def run_probe(settings: Settings, use: Callable[[RedisDemandProbe], Awaitable[T]]) -> T:
    """One call on a fresh probe, closed afterwards, in its own event loop."""
    async def go() -> T:
        probe = RedisDemandProbe(settings)
        try:
            return await use(probe)
        finally:
            await probe.close()
    return asyncio.run(go())


def fetch(settings: Settings) -> Demand:
    return run_probe(settings, lambda p: p.fetch_demand())


def recover(settings: Settings) -> int:
    return run_probe(settings, lambda p: p.recover_orphans())


@pytest.fixture
def brokers(redis_server: RedisServer) -> Iterator[Callable[[], RedisBroker]]:
    """Make real RedisBrokers (each its own broker id) on the test Redis; closes them afterwards."""
    made: list[RedisBroker] = []

    def make() -> RedisBroker:
        b = RedisBroker(url=redis_server.url)
        made.append(b)
        return b

    yield make
    for b in made:
        b.client.connection_pool.disconnect()


def actor_on(broker: RedisBroker, queue: str,
             fn: Callable[..., Any] | None = None) -> dramatiq.Actor[Any, Any]:
    def noop(n: int) -> None:
        del n

    return dramatiq.actor(fn or noop, broker=broker, queue_name=queue, actor_name=f"act_{queue}",
                          max_retries=0)


def age_heartbeat(redis_server: RedisServer, broker: RedisBroker, namespace: str = "dramatiq") -> None:
    """Make `broker` look dead to Dramatiq: its last heartbeat twice the timeout ago."""
    old = int(time.time() * 1000) - 2 * HEARTBEAT_TIMEOUT_MS
    redis_server.cli("ZADD", f"{namespace}:__heartbeats__", str(old), broker.broker_id)


def test_ready_outstanding_delayed_dead(redis_server: RedisServer,
                                        brokers: Callable[[], RedisBroker]) -> None:
    producer = brokers()
    act = actor_on(producer, "qa")
    for i in range(6):
        act.send(i)
    for i in range(3):
        act.send_with_options(args=(i,), delay=3_600_000)
    # One message dead-lettered the way a worker does it: fetched, then nacked.
    consumer = producer.consume("qa", prefetch=1)
    message = next(consumer)
    assert message is not None
    consumer.nack(message)

    d = fetch(settings_for(redis_server.url))

    (q,) = d.queues
    assert (q.queue, q.ready, q.outstanding, q.delayed, q.dead, q.orphaned) == ("qa", 5, 5, 3, 1, 0)
    assert q.in_flight == 0
    assert d.queue_length(QueueMetric.OUTSTANDING) == d.queue_length(QueueMetric.READY) == 5


def test_prefetch_by_a_real_worker_counts_in_outstanding_not_in_ready(
        redis_server: RedisServer, brokers: Callable[[], RedisBroker]) -> None:
    # Given a real Dramatiq worker with one thread (so prefetch 2) whose task blocks
    broker = brokers()
    release = threading.Event()

    def block(n: int) -> None:
        del n
        release.wait(30)

    act = actor_on(broker, "qa", block)
    for i in range(10):
        act.send(i)
    worker = dramatiq.Worker(broker, worker_threads=1, worker_timeout=100)
    worker.start()
    settings = settings_for(redis_server.url)
    try:
        # When it has fetched its prefetch
        wait_until("the prefetch fetched", lambda: int(redis_server.cli("LLEN", "dramatiq:qa")) == 8, 10, 0.02)
        d = fetch(settings)
    finally:
        release.set()
        wait_until("queue qa drained", lambda: fetch(settings).outstanding == 0, 10, 0.02)
        worker.stop()
    # Then LLEN undercounts by what the worker holds, and outstanding does not
    assert (d.ready, d.outstanding, d.in_flight, d.orphaned) == (8, 10, 2, 0)
    assert d.queue_length(QueueMetric.READY) == 8
    assert d.queue_length(QueueMetric.OUTSTANDING) == 10


def test_several_queues_are_summed_and_reported_each(redis_server: RedisServer,
                                                     brokers: Callable[[], RedisBroker]) -> None:
    producer = brokers()
    a, b = actor_on(producer, "qa"), actor_on(producer, "qb")
    for i in range(4):
        a.send(i)
    for i in range(7):
        b.send(i)
    b.send_with_options(args=(0,), delay=3_600_000)
    consumer = brokers().consume("qb", prefetch=3)
    assert next(consumer) is not None

    d = fetch(settings_for(redis_server.url, "qa,qb,qc"))

    assert [(q.queue, q.ready, q.outstanding, q.delayed) for q in d.queues] == [
        ("qa", 4, 4, 0), ("qb", 4, 7, 1), ("qc", 0, 0, 0)]
    assert (d.ready, d.outstanding, d.in_flight, d.delayed) == (8, 11, 3, 1)


def test_namespace_is_honoured(redis_server: RedisServer) -> None:
    producer = RedisBroker(url=redis_server.url, namespace="other")
    try:
        act = actor_on(producer, "qa")
        act.send(1)
        assert fetch(settings_for(redis_server.url)).outstanding == 0
        assert fetch(settings_for(redis_server.url, DRAMATIQ_NAMESPACE="other")).outstanding == 1
    finally:
        producer.client.connection_pool.disconnect()


def test_orphans_are_counted_and_recovered_with_no_worker_left(
        redis_server: RedisServer, brokers: Callable[[], RedisBroker]) -> None:
    # Given messages fetched by a consumer that then dies (its broker goes silent), in Q and Q.DQ
    producer = brokers()
    act = actor_on(producer, "qa")
    for i in range(10):
        act.send(i)
    for i in range(2):
        act.send_with_options(args=(i,), delay=3_600_000)
    dead = brokers()
    consumer = dead.consume("qa", prefetch=4)
    assert next(consumer) is not None
    delay_consumer = dead.consume("qa.DQ", prefetch=10)
    assert next(delay_consumer) is not None
    # and a live worker holding one message (fresh heartbeat): not an orphan
    live = brokers().consume("qa", prefetch=1)
    assert next(live) is not None
    settings = settings_for(redis_server.url, "qa,qb")
    ack_q = f"dramatiq:__acks__.{dead.broker_id}.qa"
    ack_dq = f"dramatiq:__acks__.{dead.broker_id}.qa.DQ"

    assert fetch(settings).orphaned == 0, "a fresh heartbeat is not an orphan"
    assert recover(settings) == 0
    assert int(redis_server.cli("LLEN", "dramatiq:qa")) == 5

    # When its heartbeat is older than Dramatiq's timeout
    age_heartbeat(redis_server, dead)
    d = fetch(settings)
    # Then they are counted (and were in outstanding/delayed all along)
    assert (d.queues[0].orphaned, d.orphaned) == (6, 6)
    assert (d.ready, d.outstanding, d.in_flight, d.delayed) == (5, 10, 5, 2)

    # And Dramatiq's maintenance puts them back, with nothing consuming the queue
    global_before = dramatiq.broker.global_broker
    assert recover(settings) == 6
    assert dramatiq.broker.global_broker is global_before, "the probe must not set the global broker"
    assert int(redis_server.cli("LLEN", "dramatiq:qa")) == 9
    assert int(redis_server.cli("LLEN", "dramatiq:qa.DQ")) == 2
    assert redis_server.cli("EXISTS", ack_q, ack_dq) == "0"
    d = fetch(settings)
    assert (d.ready, d.outstanding, d.in_flight, d.delayed, d.orphaned) == (9, 10, 1, 2, 0)
    # No heartbeat left behind by the probe or the dead broker; the live one stays; no key for "qb"
    beats = set(redis_server.cli("ZRANGE", "dramatiq:__heartbeats__", "0", "-1").split())
    assert dead.broker_id not in beats
    assert len(beats) == 2  # producer and live
    assert redis_server.cli("KEYS", "dramatiq:qb*") == ""
    assert recover(settings) == 0


def test_redis_down_is_a_broker_error_at_once(redis_server: RedisServer) -> None:
    settings = settings_for(redis_server.url, timeout_s=3)
    redis_server.stop()
    t0 = time.monotonic()
    with pytest.raises(BrokerError, match=r"^Redis at redis://127\.0\.0\.1:\d+/0: ") as err:
        fetch(settings)
    assert time.monotonic() - t0 < 1
    assert "\n" not in str(err.value)
    with pytest.raises(BrokerError):
        recover(settings)


def test_wrong_password_is_a_broker_error_without_the_password(redis_with_password: RedisServer) -> None:
    port = redis_with_password.port
    for settings in (
        settings_for(f"redis://:wr0ng-Pw@127.0.0.1:{port}/0"),
        settings_for(f"rediss://:wr0ng-Pw@127.0.0.1:{port}/0", timeout_s=1),  # not TLS: fails in handshake
        parse_settings({"REDIS_HOST": "127.0.0.1", "REDIS_PORT": str(port), "REDIS_PASSWORD": "wr0ng-Pw",
                        "DRAMATIQ_QUEUE_NAME": "qa"}),
        settings_for(f"redis://127.0.0.1:{port}/0"),
    ):
        for call in (fetch, recover):
            with pytest.raises(BrokerError) as err:
                call(settings)
            text = str(err.value)
            assert "wr0ng" not in text and redis_with_password.password not in text
            assert "\n" not in text
    with pytest.raises(BrokerError, match="authentication refused"):
        fetch(settings_for(f"redis://:wr0ng-Pw@127.0.0.1:{port}/0"))


def test_right_password_in_url_or_settings(redis_with_password: RedisServer) -> None:
    port = redis_with_password.port
    assert fetch(settings_for(redis_with_password.url)).outstanding == 0
    assert fetch(parse_settings({"REDIS_HOST": "127.0.0.1", "REDIS_PORT": str(port),
                                 "REDIS_PASSWORD": redis_with_password.password})).outstanding == 0


@pytest.fixture
def hung_redis() -> Iterator[int]:
    """A TCP listener that accepts connections and never answers."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        yield listener.getsockname()[1]


@pytest.mark.parametrize("call", [fetch, recover])
def test_hung_redis_is_a_broker_error_within_the_timeout(hung_redis: int, call: Callable[[Settings], Any]
                                                         ) -> None:
    settings = settings_for(f"redis://127.0.0.1:{hung_redis}/0", timeout_s=0.5)
    t0 = time.monotonic()
    with pytest.raises(BrokerError, match=r"no answer within 0\.5 s"):
        call(settings)
    assert time.monotonic() - t0 < 0.5 + 0.25


def test_dqtestapp_runs_under_the_dramatiq_cli(redis_server: RedisServer) -> None:
    # Given the test application run exactly as a worker unit would run it
    env = {**os.environ, "DQTEST_REDIS_URL": redis_server.url, "DQTEST_QUEUE": "dqtest",
           "PYTHONPATH": str(REPO)}
    # Module before --path: Dramatiq 2.2.1's --path takes any number of values and would swallow it.
    proc = subprocess.Popen([sys.executable, "-m", "dramatiq", "-p", "1", "-t", "4", "dqtestapp",
                             "--path", str(APP_DIR)], env=env, cwd=REPO, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        # When a burst is enqueued through its helper (in another process: it sets the global broker)
        out = subprocess.run([sys.executable, "-c", "import json, dqtestapp; "
                              "print(json.dumps(dqtestapp.enqueue_burst(20, 50)))"],
                             env={**env, "PYTHONPATH": str(APP_DIR)}, check=True, capture_output=True,
                             text=True, timeout=30).stdout
        ids = set(json.loads(out))
        assert len(ids) == 20
        # Then every id is done, once, and the broker is empty again
        wait_until("20 done", lambda: int(redis_server.cli("SCARD", "dqtest:done")) == 20, 30, 0.02)
        assert set(redis_server.cli("SMEMBERS", "dqtest:done").split()) == ids
        counts = redis_server.cli("HVALS", "dqtest:count").split()
        assert counts == ["1"] * 20
        wait_until("queue dqtest drained", lambda: fetch(settings_for(redis_server.url, "dqtest")).outstanding == 0,
                   10, 0.02)
        assert proc.poll() is None, "the dramatiq CLI exited early"
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        assert proc.stderr is not None
        stderr = proc.stderr.read().decode(errors="replace")
        proc.stderr.close()
    assert proc.returncode == 0, stderr[-2000:]



def test_one_probe_fails_while_redis_is_down_and_recovers_when_it_is_back(
        redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch) -> None:
    port = redis_server.port
    settings = settings_for(redis_server.url)
    monkeypatch.setattr("testbed.redis.free_port", lambda: port)  # the next server takes the same port

    async def scenario() -> None:
        probe = RedisDemandProbe(settings)
        try:
            assert (await probe.fetch_demand()).outstanding == 0
            redis_server.stop()
            with pytest.raises(BrokerError):
                await probe.fetch_demand()
            with pytest.raises(BrokerError):
                await probe.recover_orphans()
            again = RedisServer()
            try:
                again.cli("RPUSH", "dramatiq:qa", "x")
                assert (await probe.fetch_demand()).ready == 1
            finally:
                again.stop()
        finally:
            await probe.close()

    asyncio.run(scenario())


def test_a_slow_redis_times_out_and_the_same_probe_reads_again_afterwards(redis_server: RedisServer) -> None:
    # Given Redis that stalls every client for 1.5 s (CLIENT PAUSE) and a probe with a 0.4 s timeout
    settings = settings_for(redis_server.url, timeout_s=0.4)

    async def scenario() -> None:
        probe = RedisDemandProbe(settings)
        try:
            await probe.fetch_demand()  # the connection is open before the stall
            redis_server.cli("CLIENT", "PAUSE", "1500", "ALL")
            t0 = time.monotonic()
            with pytest.raises(BrokerError, match=r"no answer within 0\.4 s"):
                await probe.fetch_demand()
            assert time.monotonic() - t0 < 0.4 + 0.25
            # Then once Redis answers again, the same probe works (no half-read reply left on a connection)
            await asyncio.sleep(1.5)
            redis_server.cli("RPUSH", "dramatiq:qa", "y")
            assert (await probe.fetch_demand()).ready == 1
        finally:
            await probe.close()

    asyncio.run(scenario())

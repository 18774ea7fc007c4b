"""The age of the oldest waiting message, read by the real probe from messages real Dramatiq brokers enqueued.

No container: only `redis-server`. Messages carry timestamps chosen by the test (`Message.message_timestamp`,
as a producer would stamp them), so the expected age is known up to the time the test itself takes.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import dramatiq
from dramatiq.brokers.redis import RedisBroker
from dramatiq.encoder import PickleEncoder
from dramatiq.message import Message

from testbed.redis import RedisServer
from testbed.wait import wait_until
from tests.integration.test_demand import brokers, fetch, settings_for

__all__ = ["brokers"]  # the fixture, re-used


def _send(broker: RedisBroker, queue: str, stamp_ms: int) -> None:
    broker.declare_queue(queue)
    broker.enqueue(Message(queue_name=queue, actor_name="act", args=(), kwargs={}, options={},
                           message_timestamp=stamp_ms))


def test_age_is_the_list_heads_timestamp_empty_is_none_and_the_future_is_clamped(
        redis_server: RedisServer, brokers: Callable[[], RedisBroker]) -> None:
    producer = brokers()
    now_ms = int(time.time() * 1000)
    # Given qa holding a message stamped 30 s ago, then one stamped 5 s ago; qb empty; qc stamped 60 s
    # in this host's future (a producer whose clock runs ahead)
    _send(producer, "qa", now_ms - 30_000)
    _send(producer, "qa", now_ms - 5_000)
    _send(producer, "qc", now_ms + 60_000)
    started = time.monotonic()

    d = fetch(settings_for(redis_server.url, "qa,qb,qc"))

    took_s = time.monotonic() - started
    qa, qb, qc = d.queues
    assert qa.oldest_age_s is not None and 30 <= qa.oldest_age_s <= 30 + took_s + 1, qa
    assert qb.oldest_age_s is None
    assert qc.oldest_age_s == 0.0 and d.skewed == 1 and d.unreadable == 0
    assert d.oldest_age_s == qa.oldest_age_s
    # When a consumer fetches qa's head (LPOP), the next one is the oldest waiting
    consumer = brokers().consume("qa", prefetch=1)
    fetched = next(consumer)
    assert fetched is not None and fetched.message_timestamp == now_ms - 30_000
    qa = fetch(settings_for(redis_server.url, "qa")).queues[0]
    assert qa.oldest_age_s is not None and 5 <= qa.oldest_age_s <= 5 + (time.monotonic() - started) + 1
    # And a requeued message goes to the tail (RPUSH): the head is still the newer one
    consumer.requeue([fetched])
    assert int(redis_server.cli("LLEN", "dramatiq:qa")) == 2
    qa = fetch(settings_for(redis_server.url, "qa")).queues[0]
    assert qa.oldest_age_s is not None and qa.oldest_age_s < 25
    consumer.close()


def test_a_retried_message_keeps_its_first_timestamp(redis_server: RedisServer,
                                                     brokers: Callable[[], RedisBroker]) -> None:
    # Given a real worker with one thread (prefetch 2) and, in this order: a message stamped 20 s ago that
    # fails once (Dramatiq's Retries middleware puts it in the delay queue, 10 ms backoff), then two that
    # block, so the worker's prefetch is full when the retry comes back to the list
    broker = brokers()
    failed: list[str] = []
    release = threading.Event()

    def job(kind: str) -> None:
        if kind == "flaky" and not failed:
            failed.append(kind)
            raise RuntimeError("first attempt fails")
        release.wait(30)

    act = dramatiq.actor(job, broker=broker, queue_name="qa", actor_name="job", max_retries=3,
                         min_backoff=10, max_backoff=10)
    stamp_ms = int(time.time() * 1000) - 20_000
    broker.enqueue(act.message("flaky").copy(message_timestamp=stamp_ms))
    act.send("block")
    act.send("block")
    worker = dramatiq.Worker(broker, worker_threads=1, worker_timeout=50)
    worker.start()
    try:
        # When the retry is back at the head of the list (due, moved by the worker's delay consumer). Waiting
        # for "one id in the list" alone raced: right after the first attempt raised, before the Retries
        # middleware had delayed it, the one id left was a "block" message (seen on a loaded machine).
        def retry_alone_in_the_list() -> bool:
            ids = redis_server.cli("LRANGE", "dramatiq:qa", "0", "-1").split()
            return len(ids) == 1 and '"args":["flaky"]' in redis_server.cli("HGET", "dramatiq:qa.msgs", ids[0])

        wait_until("the retry back, alone, in the list", lambda: bool(failed) and retry_alone_in_the_list()
                   and int(redis_server.cli("HLEN", "dramatiq:qa.DQ.msgs")) == 0, 10, 0.02)
        age_s = fetch(settings_for(redis_server.url)).oldest_age_s
    finally:
        release.set()
        worker.stop(timeout=1000)
    # Then its age counts from the first enqueue, not from the retry
    assert age_s is not None and age_s >= 20, age_s


def test_a_body_of_another_encoder_is_unreadable_not_an_error(redis_server: RedisServer,
                                                              brokers: Callable[[], RedisBroker]) -> None:
    producer = brokers()
    previous = dramatiq.get_encoder()
    dramatiq.set_encoder(PickleEncoder())
    try:
        _send(producer, "qa", int(time.time() * 1000) - 10_000)
    finally:
        dramatiq.set_encoder(previous)
    _send(producer, "qb", int(time.time() * 1000) - 10_000)

    d = fetch(settings_for(redis_server.url, "qa,qb"))

    qa, qb = d.queues
    assert (qa.ready, qa.oldest_age_s, d.unreadable) == (1, None, 1)
    assert qb.oldest_age_s is not None and qb.oldest_age_s >= 10


def test_an_acl_without_eval_reads_the_counts_and_no_age(redis_server: RedisServer,
                                                         brokers: Callable[[], RedisBroker]) -> None:
    # Given a Redis user that may read everything but not run scripts
    redis_server.cli("ACL", "SETUSER", "counter", "on", ">pw", "~*", "+@all", "-eval", "-evalsha")
    _send(brokers(), "qa", int(time.time() * 1000) - 10_000)
    url = redis_server.url.replace("redis://", "redis://counter:pw@", 1)

    d = fetch(settings_for(url))

    # Then the counts are read as before, and the age is unknown (and said so), not an outage
    (qa,) = d.queues
    assert (qa.ready, qa.outstanding, qa.oldest_age_s, d.unreadable) == (1, 1, None, 1)

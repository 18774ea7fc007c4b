"""A real Dramatiq application for the integration tests, run as the worker units would run it.

    DQTEST_REDIS_URL=redis://127.0.0.1:6379/0 python -m dramatiq -p 1 -t 4 dqtestapp --path testbed/app

Put the module before `--path` (or write `--path=testbed/app dqtestapp`): in Dramatiq 2.2.1 `--path` takes
any number of values, so `--path testbed/app dqtestapp` swallows the module name and exits 2 (usage).

`work(msg_id, ms)` records `msg_id` in the Redis set `dqtest:started`, sleeps `ms` milliseconds, then
records it in the set `dqtest:done` and counts it in the hash `dqtest:count` (a count above 1 is an
at-least-once duplicate).

`timed(i, ms, enqueued)` (the replay harness, dev/replay) sleeps `ms` milliseconds and records
"enqueued start end" (wall-clock seconds) in the hash `dqtest:times` under `i`, and the worker
process's pid in `dqtest:pids` (which consumer took it). Environment:
`DQTEST_REDIS_URL` (required), `DQTEST_QUEUE` (default `dqtest`), `DQTEST_NAMESPACE` (default `dramatiq`).

With `DQTEST_RABBITMQ_URL` set (amqp://user:password@host:port/vhost), the messages go through Dramatiq's own
`RabbitmqBroker` instead (the records above stay in the Redis of `DQTEST_REDIS_URL`: a test counts them there).

`long(msg_id, ms)` is `work` that also prints `task <msg_id> start` and `task <msg_id> end` (the unit's
journal: which task ran where and when) and counts each start in the hash `dqtest:starts` (a count above 1 is
a re-delivery). With `DQTEST_REPORT=1` the app opts in to dqagent's per-worker reports
(`broker.add_middleware(WorkerReport())`, the one line the README shows).

`work_io` is `work` on a second queue, `<DQTEST_QUEUE>_io`: two pools of one application, each started with
Dramatiq's `--queues` for its own queue (the pool tests).
"""

from __future__ import annotations

import os
import time
import uuid

import dramatiq
import redis
from dramatiq.brokers.redis import RedisBroker

QUEUE = os.environ.get("DQTEST_QUEUE", "dqtest")
STARTED_KEY = "dqtest:started"
DONE_KEY = "dqtest:done"
COUNT_KEY = "dqtest:count"
TIMES_KEY = "dqtest:times"
PIDS_KEY = "dqtest:pids"
STARTS_KEY = "dqtest:starts"

broker: dramatiq.Broker
if os.environ.get("DQTEST_RABBITMQ_URL"):
    from dramatiq.brokers.rabbitmq import RabbitmqBroker

    broker = RabbitmqBroker(url=os.environ["DQTEST_RABBITMQ_URL"])
    store = redis.Redis.from_url(os.environ["DQTEST_REDIS_URL"])
else:
    broker = RedisBroker(url=os.environ["DQTEST_REDIS_URL"], namespace=os.environ.get("DQTEST_NAMESPACE", "dramatiq"))
    store = broker.client
if os.environ.get("DQTEST_REPORT") == "1":
    from dqagent.dramatiq import WorkerReport

    broker.add_middleware(WorkerReport())
dramatiq.set_broker(broker)


@dramatiq.actor(queue_name=QUEUE, max_retries=0)
def work(msg_id: str, ms: int) -> None:
    store.sadd(STARTED_KEY, msg_id)
    time.sleep(ms / 1000)
    with store.pipeline(transaction=True) as pipe:
        pipe.sadd(DONE_KEY, msg_id)
        pipe.hincrby(COUNT_KEY, msg_id, 1)
        pipe.execute()


@dramatiq.actor(queue_name=QUEUE, max_retries=0)
def long(msg_id: str, ms: int) -> None:
    store.hincrby(STARTS_KEY, msg_id, 1)
    print(f"task {msg_id} start", flush=True)
    work.fn(msg_id, ms)
    print(f"task {msg_id} end", flush=True)


@dramatiq.actor(queue_name=f"{QUEUE}_io", max_retries=0)
def work_io(msg_id: str, ms: int) -> None:
    work.fn(msg_id, ms)


@dramatiq.actor(queue_name=QUEUE, max_retries=0)
def timed(i: int, ms: int, enqueued: float) -> None:
    started = time.time()
    time.sleep(ms / 1000)
    with store.pipeline(transaction=False) as pipe:
        pipe.hset(TIMES_KEY, str(i), f"{enqueued:.6f} {started:.6f} {time.time():.6f}")
        pipe.hset(PIDS_KEY, str(i), os.getpid())
        pipe.execute()


def enqueue_burst(n: int, ms: int, io: bool = False, delay_ms: int | None = None) -> list[str]:
    """Enqueue `n` messages of `ms` milliseconds each (`io`: on the second queue; `delay_ms`: due that much
    later, through Dramatiq's delay queue); returns their ids (as recorded in `dqtest:done`)."""
    ids = [uuid.uuid4().hex for _ in range(n)]
    actor = work_io if io else work
    for msg_id in ids:
        if delay_ms is None:
            actor.send(msg_id, ms)
        else:
            actor.send_with_options(args=(msg_id, ms), delay=delay_ms)
    return ids

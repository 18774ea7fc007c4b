"""The demand read on RabbitMQ against Redis (`dev/bench-rabbitmq`): one run, one table, ratios to Redis.

A private redis-server and rabbitmq-server (testbed/) on loopback hold the same queues with the same counts:
for each of `--queues` Dramatiq queues, `--ready` ready messages, and nothing else. For each broker, the probe the
agent uses (`dqagent.broker.probes.open_probe`, one kept connection) reads every queue:

- read time: `--reads` reads back to back, median and 95th percentile (wall clock, this process);
- CPU at 1 read/s: `--seconds` seconds of one read per second, this process's CPU time (user + system, all its
  threads: the management API's GET runs in one) over the wall time, in % of one core. This is the part of the
  agent's CPU that the broker changes; the rest of a check (systemd, the decision) is the same for both.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import pika

from dqagent.broker.probes import open_probe
from dqagent.core.demand import DemandProbe
from dqagent.settings.config import Settings, parse_settings
from testbed.rabbitmq import RabbitServer
from testbed.redis import RedisServer


async def measure(settings: Settings, reads: int, seconds: float) -> tuple[float, float, float]:
    """(median read ms, p95 read ms, CPU % of one core at one read per second)."""
    probe: DemandProbe = open_probe(settings)
    try:
        await probe.fetch_demand()  # connect
        times = []
        for _ in range(reads):
            t = time.perf_counter()
            await probe.fetch_demand()
            times.append((time.perf_counter() - t) * 1000)
        cpu0, wall0 = time.process_time(), time.monotonic()
        while time.monotonic() - wall0 < seconds:
            await probe.fetch_demand()
            await asyncio.sleep(1 - (time.monotonic() - wall0) % 1)
        cpu = (time.process_time() - cpu0) / (time.monotonic() - wall0) * 100
    finally:
        await probe.close()
    return statistics.median(times), statistics.quantiles(times, n=20)[18], cpu


def fill_redis(redis: RedisServer, queues: list[str], ready: int) -> None:
    for q in queues:
        ids = [f"{q}-{i}" for i in range(ready)]
        redis.cli("RPUSH", f"dramatiq:{q}", *ids)
        redis.cli("HSET", f"dramatiq:{q}.msgs", *[x for i in ids for x in (i, '{"message_timestamp":1}')])


def fill_rabbit(rabbit: RabbitServer, vhost: str, queues: list[str], ready: int) -> None:
    conn = pika.BlockingConnection(pika.URLParameters(rabbit.url(vhost, password=True)))
    ch = conn.channel()
    for q in queues:
        for name in (q, f"{q}.DQ", f"{q}.XQ"):
            ch.queue_declare(name, durable=True)
        for _ in range(ready):
            ch.basic_publish("", q, b"{}")
    conn.close()


def main() -> int:
    parser = argparse.ArgumentParser(prog="dev/bench-rabbitmq")
    parser.add_argument("--queues", type=int, default=10)
    parser.add_argument("--ready", type=int, default=1000)
    parser.add_argument("--reads", type=int, default=500)
    parser.add_argument("--seconds", type=float, default=30)
    args = parser.parse_args()
    queues = [f"q{i}" for i in range(args.queues)]
    redis = RedisServer()
    rabbit = RabbitServer(management=True)
    try:
        vhost = rabbit.add_vhost("bench")
        fill_redis(redis, queues, args.ready)
        fill_rabbit(rabbit, vhost, queues, args.ready)
        names = ",".join(queues)
        cases = {
            "Redis": parse_settings({"REDIS_URL": redis.url, "DRAMATIQ_QUEUE_NAME": names}),
            "RabbitMQ, AMQP only": parse_settings({"RABBITMQ_URL": rabbit.url(vhost), "DRAMATIQ_QUEUE_NAME": names,
                                                   "RABBITMQ_PASSWORD": rabbit.password}),
            "RabbitMQ + management API": parse_settings({
                "RABBITMQ_URL": rabbit.url(vhost), "DRAMATIQ_QUEUE_NAME": names, "RABBITMQ_PASSWORD": rabbit.password,
                "RABBITMQ_MANAGEMENT_URL": rabbit.management_url}),
        }
        rows = {name: asyncio.run(measure(s, args.reads, args.seconds)) for name, s in cases.items()}
    finally:
        rabbit.stop()
        redis.stop()
    base = rows["Redis"]
    print(f"{args.queues} queues x {args.ready} ready messages; {args.reads} reads back to back, then "
          f"{args.seconds:g} s at one read per second")
    print("| broker | read median (ms) | read p95 (ms) | CPU at 1 read/s (% of a core) | median vs Redis "
          "| CPU vs Redis |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, (med, p95, cpu) in rows.items():
        print(f"| {name} | {med:.2f} | {p95:.2f} | {cpu:.2f} | {med / base[0]:.2f}x | {cpu / base[2]:.2f}x |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

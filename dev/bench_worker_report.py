"""The app-side middleware's cost (a measurement, not a test): one Dramatiq worker's throughput with and without
`dqagent.dramatiq.WorkerReport`, in one run, as a table with the ratio.

Two brokers: Dramatiq's own `StubBroker` (in memory: no network hides the middleware's cost, so this is its
worst case relative to real work) and a real `RedisBroker` on a private redis-server on loopback (the bench's,
stopped by PID at the end; `--messages` / 4 per round there). 8 worker threads, actors that do nothing;
rounds alternate without/with (`--rounds` each) so that a machine's drift hits both; the report is written
every `--interval` seconds (default 1, as in production) into a temporary directory. Prints per round and the
medians, the ratio, and the per-message difference in microseconds.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import dramatiq
from dramatiq.brokers.redis import RedisBroker
from dramatiq.brokers.stub import StubBroker

from dqagent.dramatiq import WorkerReport

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from testbed.redis import RedisServer


def one_round(n: int, report_dir: str | None, interval_s: float, redis_url: str | None = None) -> float:
    """Messages per second through one worker (enqueued first, then timed from the worker's start to the join)."""
    broker: dramatiq.Broker = StubBroker() if redis_url is None else RedisBroker(url=redis_url)
    if redis_url is not None:
        broker.client.flushall()
    if report_dir is not None:
        broker.add_middleware(WorkerReport(interval_s=interval_s, directory=report_dir))

    @dramatiq.actor(broker=broker, queue_name="bench")
    def noop() -> None:
        return None

    for _ in range(n):
        noop.send()
    worker = dramatiq.Worker(broker, worker_threads=8, worker_timeout=100)
    began = time.perf_counter()
    worker.start()
    broker.join("bench")
    worker.join()
    took = time.perf_counter() - began
    worker.stop()
    return n / took


def measure(name: str, n: int, rounds: int, interval_s: float, redis_url: str | None) -> tuple[float, float]:
    without: list[float] = []
    with_report: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        one_round(min(n, 2000), tmp, interval_s, redis_url)  # warm-up (imports, first thread start)
        for r in range(rounds):
            without.append(one_round(n, None, interval_s, redis_url))
            with_report.append(one_round(n, tmp, interval_s, redis_url))
            print(f"{name} round {r + 1}: without {without[-1]:,.0f} msg/s, with WorkerReport "
                  f"{with_report[-1]:,.0f} msg/s")
        left = [f for f in os.listdir(tmp) if f.endswith(".json")]
    assert not left, f"report files left after shutdown: {left}"
    return statistics.median(without), statistics.median(with_report)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--messages", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--interval", type=float, default=1.0)
    args = parser.parse_args(argv)
    logging.disable(logging.WARNING)
    rows = [("StubBroker", args.messages, measure("stub", args.messages, args.rounds, args.interval, None))]
    redis = RedisServer()
    try:
        n = args.messages // 4
        rows.append(("RedisBroker (loopback)", n, measure("redis", n, args.rounds, args.interval, redis.url)))
    finally:
        redis.stop()
    print()
    print(f"| broker (1 worker, 8 threads, no-op actor; median of {args.rounds} rounds) | messages | without msg/s "
          "| with WorkerReport msg/s | ratio | difference per message |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, n, (a, b) in rows:
        print(f"| {name} | {n:,} | {a:,.0f} | {b:,.0f} | {b / a:.3f} | {(1 / b - 1 / a) * 1e6:+.1f} us |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

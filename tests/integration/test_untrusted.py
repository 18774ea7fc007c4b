"""Broker data is untrusted input, for real: a rogue client of the broker's Redis writes what no
Dramatiq or dqagent would, while a dqagent in fleet mode (one member) polls it every half second in a real
systemd, with the watchdog on and `/metrics` served.

One container and one Redis for the module; each test removes what it wrote.
"""

from __future__ import annotations

import json
import statistics
import time
import urllib.request
from typing import Any

import pytest
import redis as redis_py

from testbed.agent import QUEUE, dqagent, install, journal, running_workers, set_backlog
from testbed.nspawn import Container
from testbed.redis import RedisServer, free_port
from testbed.wait import wait_until

POLL_S = 0.5
FLEET_KEY = "dramatiq:__dqagent_fleet__:bench"
ROGUE_HEARTBEAT = b"\xff\xfeq"


@pytest.fixture(scope="module")
def agent(module_container: Container, redis: RedisServer) -> tuple[Container, str]:
    """dqagent in FLEET=bench (alone in it), the target policy polling every 0.5 s, WatchdogSec=3; and the
    URL of its /metrics."""
    c, port = module_container, free_port()
    set_backlog(redis, 0)
    install(c, redis, watchdog_s=3, SCALING_POLICY="target", TARGET_PER_WORKER=10, CHECK_INTERVAL=POLL_S,
            DEMAND_POLL_INTERVAL=POLL_S, REDIS_TIMEOUT=1, MIN_PROCESSES=1, MAX_PROCESSES=4,
            FLEET="bench", FLEET_HOST_ID="host-a", METRICS_ADDRESS=f"127.0.0.1:{port}")
    return c, f"http://127.0.0.1:{port}/metrics"


def scrape(url: str, name: str) -> dict[str, float]:
    """label value -> sample of the one-label family `name`."""
    with urllib.request.urlopen(url, timeout=5) as r:
        text = r.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith(name + "{"):
            labels, value = line.rsplit(" ", 1)
            out[labels.split('"')[1]] = float(value)
    return out


def restarts(c: Container) -> tuple[str, str]:
    return c.unit_property("dqagent.service", "MainPID"), c.unit_property("dqagent.service", "NRestarts")


def rogue_records(now_ms: int) -> dict[str, bytes]:
    """Fleet records no dqagent writes: record key suffix (host id) -> stored value."""
    def body(**fields: Any) -> bytes:
        return json.dumps({"host": "x", "weight": 4, "min_processes": 0, "max_processes": 4, "workers": 0,
                           **fields}).encode()

    return {
        "rogue-huge": b"%d " % now_ms + body(host="rogue-huge", max_processes=10**15, global_target=10**15,
                                             decided_ms=now_ms, workers=10**15),
        "rogue-stamp": "² ".encode() + body(host="rogue-stamp"),
        "rogue-deep": b"%d " % now_ms + b"[" * 200_000 + b"]" * 200_000,
        "rogue-weight": b"%d " % now_ms + body(host="rogue-weight", weight=10**12, max_processes=4),
    }


def test_a_rogue_client_writing_bad_heartbeats_and_fleet_records_changes_nothing_and_is_reported_once(
        agent: tuple[Container, str], redis: RedisServer) -> None:
    c, url = agent
    client = redis_py.Redis(port=redis.port)
    set_backlog(redis, 30)  # G = 3 workers at 10 per worker; the only member takes all of it
    wait_until("3 workers", lambda: len(running_workers(c)) == 3, timeout=30)
    before = restarts(c)
    rejected_before = scrape(url, "dqagent_broker_records_rejected_total")
    records = rogue_records(int(client.time()[0]) * 1000)
    try:
        # When a rogue client writes a non-UTF-8 heartbeat member (stale: score 0) and four bad fleet records
        client.zadd("dramatiq:__heartbeats__", {ROGUE_HEARTBEAT: 0})
        for host, value in records.items():
            client.set(f"{FLEET_KEY}:host:{host}", value)
        client.sadd(FLEET_KEY, *records)
        # Many polls over the bad data: 9 more decisions (each poll logs one; the first may have read before)
        polls = len(journal(c, "dqagent", "DQAGENT_EVENT=decision"))
        wait_until("8 polls over the bad data",
                   lambda: len(journal(c, "dqagent", "DQAGENT_EVENT=decision")) >= polls + 9, timeout=30)

        # Then the agent keeps its PID (no restart) and keeps deciding within [MIN, MAX] on real demand
        assert restarts(c) == before
        set_backlog(redis, 40)
        wait_until("4 workers (MAX)", lambda: len(running_workers(c)) == 4, timeout=30)
        set_backlog(redis, 0)
        wait_until("1 worker (MIN)", lambda: len(running_workers(c)) == 1, timeout=30)
        assert restarts(c) == before
        assert c.unit_property("dqagent.service", "ActiveState") == "active"

        # ... each bad value is reported once, every skip is counted in /metrics
        logged = journal(c, "dqagent", "DQAGENT_EVENT=broker_data_rejected")
        keys = sorted(e["KEY"] for e in logged)
        assert keys == sorted(["dramatiq:__heartbeats__ \\xff\\xfeq",
                               *(f"{FLEET_KEY}:host:{h}" for h in records)]), logged
        by_key = {e["KEY"]: e["REASON"] for e in logged}
        assert by_key[f"{FLEET_KEY}:host:rogue-deep"] == "400014 bytes, more than 4096"
        assert by_key[f"{FLEET_KEY}:host:rogue-stamp"].startswith("stamp: expected 1..15 ASCII digits")
        assert by_key[f"{FLEET_KEY}:host:rogue-weight"].startswith("weight: expected an integer in 1..1000")
        assert all(e["MESSAGE_ID"] == "b1b466bcebee4a129a5629af6c2cc16d" for e in logged)
        rejected = scrape(url, "dqagent_broker_records_rejected_total")
        assert rejected["heartbeat"] - rejected_before.get("heartbeat", 0) >= 8
        assert rejected["fleet_record"] - rejected_before.get("fleet_record", 0) >= 4 * 8
        assert not journal(c, "dqagent", "DQAGENT_EVENT=tick_failed")

        # ... and `dqagent status` (and --fleet) shows the skipped data, never a traceback
        out = dqagent(c, "status", "--fleet", check=False)
        assert out.returncode == 0 and "Traceback" not in out.stderr + out.stdout, out.stderr
        assert "skipped untrusted broker data: heartbeat dramatiq:__heartbeats__ \\xff\\xfeq" in out.stdout
        assert f"skipped untrusted record: {FLEET_KEY}:host:rogue-huge: max_processes" in out.stdout
    finally:
        client.zrem("dramatiq:__heartbeats__", ROGUE_HEARTBEAT)
        client.delete(*(f"{FLEET_KEY}:host:{h}" for h in records))
        client.srem(FLEET_KEY, *records)
        client.close()


def test_a_huge_message_at_the_head_never_stalls_redis_for_other_clients(agent: tuple[Container, str],
                                                                         redis: RedisServer) -> None:
    c, _ = agent
    client = redis_py.Redis(port=redis.port)
    body = json.dumps({"queue_name": QUEUE, "actor_name": "a", "args": ["x" * 20_000_000], "kwargs": {},
                       "options": {}, "message_id": "big", "message_timestamp": int(time.time() * 1000)},
                      separators=(",", ":"))
    set_backlog(redis, 0)
    try:
        # Given a 20 MB message at the head of the queue, and the agent polling every half second
        client.hset(f"dramatiq:{QUEUE}.msgs", "big", body)
        client.rpush(f"dramatiq:{QUEUE}", "big")
        polls_before = len(journal(c, "dqagent", "DQAGENT_EVENT=decision"))

        # When another client PINGs Redis for 6 s (a dozen polls)
        latencies: list[float] = []
        pinger = redis_py.Redis(port=redis.port)
        stop = time.monotonic() + 12 * POLL_S
        while time.monotonic() < stop:
            began = time.perf_counter()
            pinger.ping()
            latencies.append(time.perf_counter() - began)
            time.sleep(0.002)
        pinger.close()

        # Then every answer came within 50 ms (a whole-body read takes 66 ms, its decode 115 ms more)
        worst = max(latencies)
        print(f"\n{len(latencies)} PINGs during the agent's polls: median {statistics.median(latencies) * 1000:.2f} "
              f"ms, max {worst * 1000:.1f} ms")
        assert worst < 0.050
        assert len(journal(c, "dqagent", "DQAGENT_EVENT=decision")) > polls_before  # it did poll (DEBUG lines)
        assert journal(c, "dqagent", "DQAGENT_EVENT=age_unreadable")  # the age of that head is unknown
    finally:
        client.delete(f"dramatiq:{QUEUE}", f"dramatiq:{QUEUE}.msgs")
        client.close()


"""Several worker pools on one host, in the real-systemd bench with real Redis.

- Two pools of one real Dramatiq application on different queues (`--threads 1` and `--threads 8`, each with
  Dramatiq's `--queues`): a burst on one queue scales only its pool, the other pool's PIDs stay; both pools
  in `systemctl list-units`, `dqagent status --json`, `/metrics` and the journal (DQAGENT_POOL=).
- HOST_MAX_PROCESSES=5 with both pools bursting (cheap `/bin/sleep` workers; demand set in Redis): the
  higher-priority pool gets its share first, neither goes below MIN, the sum never exceeds 5, and the other
  pool grows back when the burst ends.
- `systemctl reload dqagent` adds, changes and removes a pool; a bad pool file changes nothing.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.request

from testbed.agent import APP_DIR, DQAGENT, PYTHON, QUEUE, dqagent, install, journal, running_workers, set_backlog
from testbed.nspawn import Container
from testbed.redis import RedisServer, free_port
from testbed.wait import wait_until
from tests.integration.test_reliability import done, dramatiq_command, install_real

IO_QUEUE = f"{QUEUE}_io"
POOL_FILE = "/etc/dqagent/pools.d/io.env"


def pool_file(c: Container, name: str, **values: object) -> None:
    c.write(f"/etc/dqagent/pools.d/{name}.env",
            "".join(f"{k}={v}\n" if " " not in str(v) else f'{k}="{v}"\n' for k, v in values.items()))


def units_of(c: Container, pattern: str) -> list[str]:
    out = c.systemctl("list-units", pattern, "--plain", "--no-legend", "--state=running").stdout
    return sorted(line.split()[0] for line in out.splitlines() if line.strip())


def enqueue_io(c: Container, redis: RedisServer, n: int, ms: int) -> list[str]:
    code = (f"import sys; sys.path.insert(0, {str(APP_DIR)!r}); import dqtestapp; "
            f"print('\\n'.join(dqtestapp.enqueue_burst({n}, {ms}, io=True)))")
    return c.run([PYTHON, "-c", code], env={"DQTEST_REDIS_URL": redis.url, "DQTEST_QUEUE": QUEUE}).stdout.split()


def test_a_burst_on_one_pools_queue_scales_only_that_pool(fresh_container: Container,
                                                          redis_server: RedisServer) -> None:
    c, port = fresh_container, free_port()
    # Given one application, two pools: the default on `dqtest` (1 thread), pool io on `dqtest_io` (8 threads)
    pool_file(c, "io", DRAMATIQ_QUEUE_NAME=IO_QUEUE, MIN_PROCESSES=1, MAX_PROCESSES=3, CHECK_INTERVAL=1,
              PROCESS_STARTUP_DELAY=0.5, DRAMATIQ_COMMAND=dramatiq_command(8) + f" --queues {IO_QUEUE}",
              WORKER_DIRECTORY=APP_DIR)
    install_real(c, redis_server, threads=1, MIN_PROCESSES=1, MAX_PROCESSES=3,
                 DRAMATIQ_COMMAND=dramatiq_command(1) + f" --queues {QUEUE}", METRICS_ADDRESS=f"127.0.0.1:{port}")
    wait_until("one worker per pool", lambda: running_workers(c) == ["dramatiq-worker@1.service",
                                                                     "dramatiq-worker@io-1.service"], timeout=60)
    # Then systemctl lists both pools, and one pool with its own pattern
    assert units_of(c, "dramatiq-worker@*") == ["dramatiq-worker@1.service", "dramatiq-worker@io-1.service"]
    assert units_of(c, "dramatiq-worker@io-*") == ["dramatiq-worker@io-1.service"]
    default_pid = c.unit_property("dramatiq-worker@1.service", "MainPID")
    # When a burst of 120 tasks of 1 s arrives on the io pool's queue only
    ids = enqueue_io(c, redis_server, 120, 1000)
    # Then only the io pool grows, and the default pool's worker keeps its PID
    wait_until("the io pool at 3", lambda: len(units_of(c, "dramatiq-worker@io-*")) == 3, timeout=60)
    assert units_of(c, "dramatiq-worker@[0-9]*") == ["dramatiq-worker@1.service"]
    assert c.unit_property("dramatiq-worker@1.service", "MainPID") == default_pid
    # And the io pool's workers run its own command
    cmdline = c.run(["cat", f"/proc/{c.unit_property('dramatiq-worker@io-2.service', 'MainPID')}/cmdline"]).stdout
    assert "--threads\x008" in cmdline and IO_QUEUE in cmdline, cmdline
    # And status --json has both pools, with the old top-level keys for the default pool
    report = json.loads(dqagent(c, "status", "--json").stdout)
    assert report["current_processes"] == 1 and report["min_processes"] == 1
    assert set(report["pools"]) == {"default", "io"}
    assert report["pools"]["io"]["current_processes"] == 3
    # And the journal's decisions name their pool, and /metrics has the pool label
    decided = {r.get("DQAGENT_POOL") for r in journal(c, "dqagent", "DQAGENT_EVENT=decision")}
    assert decided == {"default", "io"}
    ups = journal(c, "dqagent", "DQAGENT_EVENT=scale_up")
    assert {r["DQAGENT_POOL"] for r in ups if r["TARGET"] != "1"} == {"io"}  # after the start-up's 0 -> 1
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    assert 'pool="io"' in text and 'pool="default"' in text
    # And every task was processed, by the io pool
    wait_until("all 120 done", lambda: set(ids) <= done(redis_server), timeout=120)
    assert c.unit_property("dramatiq-worker@1.service", "MainPID") == default_pid


def test_the_host_budget_is_shared_by_priority(fresh_container: Container, redis_server: RedisServer) -> None:
    c = fresh_container
    # Given two pools of cheap workers, at most 5 on the host; io has the higher priority
    pool_file(c, "io", DRAMATIQ_QUEUE_NAME=IO_QUEUE, MIN_PROCESSES=1, MAX_PROCESSES=5, POOL_PRIORITY=10,
              CHECK_INTERVAL=1, PROCESS_STARTUP_DELAY=0.5, GRACEFUL_SHUTDOWN_TIMEOUT=5,
              DRAMATIQ_COMMAND="/bin/sleep infinity")
    install(c, redis_server, MIN_PROCESSES=1, MAX_PROCESSES=5, HOST_MAX_PROCESSES=5)
    seen: list[tuple[int, int]] = []
    stop = threading.Event()

    def count() -> tuple[int, int]:
        out = c.systemctl("list-units", "dramatiq-worker@*", "--plain", "--no-legend", "--all").stdout
        active = [line.split()[0] for line in out.splitlines()
                  if line.strip() and line.split()[2] in ("active", "activating", "deactivating")]
        io = sum(1 for u in active if "@io-" in u)
        return len(active) - io, io

    def sample() -> None:
        while not stop.is_set():
            seen.append(count())
            time.sleep(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        # When the default pool's queue has a backlog: it takes the room io does not use (4 + io's MIN 1)
        set_backlog(redis_server, 200)
        wait_until("default at 4", lambda: count() == (4, 1), timeout=60)
        # When io's queue bursts too: io gets its share first, the default pool gives way down to its MIN
        set_backlog(redis_server, 200, queue=IO_QUEUE)
        wait_until("io at 4, default at 1", lambda: count() == (1, 4), timeout=90)
        # When io's burst ends: the default pool grows back
        set_backlog(redis_server, 0, queue=IO_QUEUE)
        wait_until("default back at 4", lambda: count() == (4, 1), timeout=90)
    finally:
        stop.set()
        sampler.join()
    # Then the host never ran more than 5 worker units, nor a pool below its MIN
    assert max(a + b for a, b in seen) <= 5, max(seen, key=sum)
    assert min(a for a, _ in seen) >= 1 and min(b for _, b in seen) >= 1
    # And the journal says which pool gave way, and to whom
    yields = journal(c, "dqagent", "DQAGENT_EVENT=budget_yield")
    assert yields and all(r["DQAGENT_POOL"] == "default" and r["DQAGENT_TO_POOLS"] == "io" for r in yields)


def test_reload_adds_changes_and_removes_pools(fresh_container: Container, redis_server: RedisServer) -> None:
    c = fresh_container
    install(c, redis_server, MIN_PROCESSES=1, MAX_PROCESSES=2)
    wait_until("the default pool's worker", lambda: running_workers(c) == ["dramatiq-worker@1.service"])
    pid = c.unit_property("dramatiq-worker@1.service", "MainPID")
    # When a pool file is added and the agent reloaded: its MIN workers start, the default pool's stay
    pool_file(c, "io", DRAMATIQ_QUEUE_NAME=IO_QUEUE, MIN_PROCESSES=2, MAX_PROCESSES=3, CHECK_INTERVAL=1,
              PROCESS_STARTUP_DELAY=0.5, DRAMATIQ_COMMAND="/bin/sleep infinity")
    c.systemctl("reload", "dqagent")
    wait_until("pool io at its MIN", lambda: units_of(c, "dramatiq-worker@io-*") == [
        "dramatiq-worker@io-1.service", "dramatiq-worker@io-2.service"], timeout=30)
    assert c.unit_property("dramatiq-worker@1.service", "MainPID") == pid
    # When its file changes (MIN 1, MAX 1): the pool shrinks to 1 (at its next check, once its starts settled)
    pool_file(c, "io", DRAMATIQ_QUEUE_NAME=IO_QUEUE, MIN_PROCESSES=1, MAX_PROCESSES=1, CHECK_INTERVAL=1,
              PROCESS_STARTUP_DELAY=0.5, DRAMATIQ_COMMAND="/bin/sleep infinity")
    c.systemctl("reload", "dqagent")
    wait_until("pool io at 1", lambda: units_of(c, "dramatiq-worker@io-*") == ["dramatiq-worker@io-1.service"],
               timeout=30)
    # When a bad pool file appears: the reload fails with one line naming the file and key; nothing changes
    pool_file(c, "batch", DRAMATIQ_QUEUE_NAME="batch", MAX_PROCESSES="lots")
    failed = c.systemctl("reload", "dqagent", check=False)
    assert failed.returncode != 0
    agent_pid = c.unit_property("dqagent.service", "MainPID")
    answer = c.run([DQAGENT, "reload", "--pid", agent_pid], user="dqagent", check=False)
    assert answer.returncode != 0 and "batch.env: MAX_PROCESSES" in answer.stderr, answer.stderr
    assert len(answer.stderr.strip().splitlines()) == 1, answer.stderr
    wait_until("the failure in the journal", lambda: any(
        r["KEY"].endswith("batch.env: MAX_PROCESSES") for r in journal(c, "dqagent", "DQAGENT_EVENT=reload_failed")))
    time.sleep(2)
    assert units_of(c, "dramatiq-worker@*") == ["dramatiq-worker@1.service", "dramatiq-worker@io-1.service"]
    # When the bad file goes and io's file is removed: io's worker stops gracefully, the default pool's stays
    c.run(["rm", "/etc/dqagent/pools.d/batch.env", POOL_FILE])
    c.systemctl("reload", "dqagent")
    wait_until("pool io gone", lambda: units_of(c, "dramatiq-worker@io-*") == [], timeout=30)
    assert c.unit_property("dramatiq-worker@1.service", "MainPID") == pid
    removed = journal(c, "dqagent", "DQAGENT_EVENT=pool_removed")
    assert [r["DQAGENT_POOL"] for r in removed] == ["io"]

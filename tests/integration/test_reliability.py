"""No message lost: real Dramatiq workers (testbed/app/dqtestapp.py) under the agent, in real systemd."""

from __future__ import annotations

import time

from testbed.agent import (
    APP_DIR,
    PYTHON,
    QUEUE,
    dqagent,
    install,
    journal,
    running_workers,
    settings_text,
    sigkill_worker,
    worker_names,
)
from testbed.nspawn import Container
from testbed.redis import RedisServer
from testbed.wait import wait_until


def dramatiq_command(threads: int = 4) -> str:
    # No --path: Dramatiq's default "." is WORKER_DIRECTORY, which worker-exec enters.
    return f"{PYTHON} -m dramatiq --processes 1 --threads {threads} dqtestapp"


def install_real(c: Container, redis: RedisServer, now: bool = True, threads: int = 4, **overrides: object) -> None:
    """Install with the real test app as DRAMATIQ_COMMAND; its broker URL goes through worker.env."""
    c.write("/etc/dqagent/worker.env", f"DQTEST_REDIS_URL={redis.url}\nDQTEST_QUEUE={QUEUE}\n")
    settings: dict[str, object] = {"DRAMATIQ_COMMAND": dramatiq_command(threads), "WORKER_DIRECTORY": str(APP_DIR)}
    settings.update(overrides)
    install(c, redis, now=now, **settings)


def enqueue(c: Container, redis: RedisServer, n: int, ms: int) -> list[str]:
    """Enqueue through Dramatiq itself (a producer in the container, like an application would)."""
    code = (f"import sys; sys.path.insert(0, {str(APP_DIR)!r}); import dqtestapp; "
            f"print('\\n'.join(dqtestapp.enqueue_burst({n}, {ms})))")
    out = c.run([PYTHON, "-c", code], env={"DQTEST_REDIS_URL": redis.url, "DQTEST_QUEUE": QUEUE}).stdout
    return out.split()


def dramatiq_ready(c: Container, unit: str = "dramatiq-worker@1.service") -> bool:
    """Whether the unit's Dramatiq worker process consumes: Dramatiq logs this line once its worker started
    (the consumer threads run), in the unit's journal. The broker's heartbeats cannot tell: producers
    write them too."""
    return any("Worker process is ready for action." in str(r.get("MESSAGE", "")) for r in journal(c, unit))


def outstanding(redis: RedisServer) -> int:
    return int(redis.cli("HLEN", f"dramatiq:{QUEUE}.msgs"))


def ready(redis: RedisServer) -> int:
    return int(redis.cli("LLEN", f"dramatiq:{QUEUE}"))


def tasks_started(redis: RedisServer) -> set[str]:
    return set(redis.cli("SMEMBERS", "dqtest:started").split())


def done(redis: RedisServer) -> set[str]:
    return set(redis.cli("SMEMBERS", "dqtest:done").split())


def ack_sets(redis: RedisServer) -> list[str]:
    keys = redis.cli("KEYS", "dramatiq:__acks__.*").split()
    return [k for k in keys if int(redis.cli("SCARD", k))]


def test_graceful_stop_finishes_running_tasks_and_returns_prefetched(fresh_container: Container,
                                                                     redis_server: RedisServer) -> None:
    c = fresh_container
    # Given one real worker with 2 threads (prefetch 4) and 4 tasks of 4 s: 2 run, 2 wait prefetched
    install_real(c, redis_server, now=False, threads=2, MIN_PROCESSES=0, MAX_PROCESSES=2,
                 GRACEFUL_SHUTDOWN_TIMEOUT=15)
    dqagent(c, "scale-up", "--processes", "1")
    wait_until("Dramatiq's worker ready", lambda: dramatiq_ready(c))
    ids = enqueue(c, redis_server, 4, 4000)
    wait_until("all 4 fetched by the worker", lambda: ready(redis_server) == 0 and outstanding(redis_server) == 4)
    wait_until("2 tasks running", lambda: len(tasks_started(redis_server)) == 2)

    # When the agent's scale-down stops it (SIGTERM to Dramatiq's main process only: KillMode=mixed)
    started = time.monotonic()
    out = dqagent(c, "scale-down", "--processes", "1").stdout
    took = time.monotonic() - started

    # Then the two running tasks finished, within the graceful timeout, without SIGKILL
    assert "dramatiq-worker@1.service: stopped (done)" in out
    assert took < 15
    assert len(done(redis_server) & set(ids)) == 2
    # ... and the two prefetched messages are back in the queue, nothing is held in an ack set
    assert ready(redis_server) == 2 and outstanding(redis_server) == 2
    assert ack_sets(redis_server) == []
    records = c.run(["journalctl", "-u", "dramatiq-worker@1", "-o", "cat", "--no-pager"]).stdout
    assert "SIGKILL" not in records


def test_messages_of_a_sigkilled_worker_come_back_with_no_consumer_left(fresh_container: Container,
                                                                        redis_server: RedisServer) -> None:
    c = fresh_container
    # Given a real worker that is SIGKILLed past GRACEFUL_SHUTDOWN_TIMEOUT with tasks running
    install_real(c, redis_server, threads=2, MIN_PROCESSES=1, MAX_PROCESSES=1, GRACEFUL_SHUTDOWN_TIMEOUT=1)
    wait_until("worker", lambda: running_workers(c) == worker_names(1))
    wait_until("Dramatiq's worker ready", lambda: dramatiq_ready(c))
    ids = enqueue(c, redis_server, 3, 120_000)
    wait_until("all fetched", lambda: ready(redis_server) == 0 and outstanding(redis_server) == 3)
    # From now on new workers cannot consume (models a pool with no consumer for this queue)
    c.write("/etc/dqagent/dqagent.env", settings_text(
        redis_server, DRAMATIQ_COMMAND="/bin/sleep infinity", MIN_PROCESSES=1, MAX_PROCESSES=1,
        GRACEFUL_SHUTDOWN_TIMEOUT=1, WORKER_DIRECTORY=str(APP_DIR)))
    sigkill_worker(c, "dramatiq-worker@1.service")  # systemd restarts it (Restart=on-failure): /bin/sleep
    assert ack_sets(redis_server), "the killed worker's messages are held in its ack set"
    assert ready(redis_server) == 0

    # When Dramatiq's heartbeat timeout (60 s) passes, the agent counts them as orphans and triggers
    # Dramatiq's own maintenance: they are back in the queue within a check
    wait_until("orphans requeued", lambda: ready(redis_server) == 3, timeout=90, interval=1)
    assert ack_sets(redis_server) == []
    assert journal(c, "dqagent", "DQAGENT_EVENT=orphans_recovered")
    assert done(redis_server).isdisjoint(ids)


def test_burst_of_2000_with_scaling_and_a_killed_worker_loses_nothing(fresh_container: Container,
                                                                      redis_server: RedisServer) -> None:
    c = fresh_container
    install_real(c, redis_server, threads=4, MIN_PROCESSES=1, MAX_PROCESSES=4, CHECK_INTERVAL=1,
                 PROCESS_STARTUP_DELAY=1, GRACEFUL_SHUTDOWN_TIMEOUT=20)
    wait_until("worker", lambda: running_workers(c) == worker_names(1))
    wait_until("Dramatiq's worker ready", lambda: dramatiq_ready(c))
    started = time.monotonic()
    ids = enqueue(c, redis_server, 2000, 60)
    wait_until("scaled to 4", lambda: len(running_workers(c)) == 4, timeout=60)

    # SIGKILL one worker in the middle of its tasks (systemd restarts it: Restart=on-failure)
    wait_until("tasks in flight", lambda: len(done(redis_server)) > 200, timeout=60)
    sigkill_worker(c, "dramatiq-worker@2.service")

    wait_until("every message completed", lambda: set(ids) <= done(redis_server), timeout=240, interval=1)
    drained_s = time.monotonic() - started
    wait_until("outstanding back to 0", lambda: outstanding(redis_server) == 0, timeout=30)
    wait_until("scaled back down to 1", lambda: len(running_workers(c)) == 1, timeout=60)

    assert ack_sets(redis_server) == []
    assert redis_server.cli("ZCARD", f"dramatiq:{QUEUE}.XQ") == "0"
    assert journal(c, "dqagent", "DQAGENT_EVENT=scale_down")
    counts = redis_server.cli("HVALS", "dqtest:count").split()
    duplicates = sum(int(x) - 1 for x in counts)
    print(f"\nburst of 2000 x 60 ms drained in {drained_s:.1f}s; at-least-once duplicates: {duplicates}")


def test_target_policy_scales_a_real_burst_up_within_seconds(fresh_container: Container,
                                                             redis_server: RedisServer) -> None:
    c = fresh_container
    # CHECK_INTERVAL stays long: the target policy reads demand every DEMAND_POLL_INTERVAL instead
    install_real(c, redis_server, threads=4, SCALING_POLICY="target", TARGET_PER_WORKER=4, SCALE_UP_MAX_STEP=4,
                 SCALE_DOWN_WINDOW=5, MIN_PROCESSES=1, MAX_PROCESSES=5, CHECK_INTERVAL=60,
                 DEMAND_POLL_INTERVAL=1, PROCESS_STARTUP_DELAY=1)
    wait_until("worker", lambda: running_workers(c) == worker_names(1))
    wait_until("Dramatiq's worker ready", lambda: dramatiq_ready(c))
    started = time.monotonic()
    ids = enqueue(c, redis_server, 400, 100)
    wait_until("5 workers", lambda: running_workers(c) == worker_names(5), timeout=20, interval=0.2)
    reaction_s = time.monotonic() - started
    # One proportional step, not one worker per check
    ups = journal(c, "dqagent", "DQAGENT_EVENT=scale_up")
    assert int(ups[-1]["TARGET"]) == 5 and len(ups) <= 3
    assert reaction_s < 12
    wait_until("burst done", lambda: set(ids) <= done(redis_server), timeout=120, interval=1)
    wait_until("back to MIN after the window", lambda: running_workers(c) == worker_names(1), timeout=60)
    print(f"\ntarget policy: 1 -> 5 workers {reaction_s:.1f}s after a 400-message burst")

"""A Redis that accepts connections but answers nothing (DEBUG SLEEP) is reported, and workers are kept."""

from __future__ import annotations

import subprocess
import time

from testbed.agent import install, journal, main_pids, running_workers, set_backlog, worker_names
from testbed.nspawn import Container
from testbed.redis import RedisServer
from testbed.wait import wait_until

REDIS_TIMEOUT_S = 5
CHECK_INTERVAL_S = 1
STALL_S = 30


def test_stalled_redis_is_reported_within_the_timeout_and_workers_kept(
    fresh_container: Container, redis_server: RedisServer
) -> None:
    c = fresh_container
    # Given 4 workers held by a backlog of 40
    install(c, redis_server, MIN_PROCESSES=1, MAX_PROCESSES=4, CHECK_INTERVAL=CHECK_INTERVAL_S,
            REDIS_TIMEOUT=REDIS_TIMEOUT_S)
    set_backlog(redis_server, 40)
    wait_until("4 workers", lambda: running_workers(c) == worker_names(4), timeout=60)
    pids = main_pids(c, worker_names(4))
    wait_until("a normal status", lambda: "4 running of 4 wanted" in c.unit_property("dqagent.service", "StatusText"))

    # When Redis stops answering for 30 s (connections are still accepted)
    sleeper = subprocess.Popen(["redis-cli", "-p", str(redis_server.port), "DEBUG", "SLEEP", str(STALL_S)],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        stalled_at = time.monotonic()
        # Then within REDIS_TIMEOUT + one poll (+ slack for a loaded machine) the stall is an error event
        wait_until("redis_error logged", lambda: journal(c, "dqagent", "DQAGENT_EVENT=redis_error"),
                   timeout=REDIS_TIMEOUT_S + CHECK_INTERVAL_S + 4)
        noticed_s = time.monotonic() - stalled_at
        [error] = journal(c, "dqagent", "DQAGENT_EVENT=redis_error")
        assert f"no answer within {REDIS_TIMEOUT_S} s" in error["ERROR"]
        status = c.unit_property("dqagent.service", "StatusText")
        assert f"no answer within {REDIS_TIMEOUT_S} s" in status and "keeping workers" in status, status
        # ... the agent stays up and the workers are the same processes
        assert c.unit_property("dqagent.service", "ActiveState") == "active"
        assert main_pids(c, worker_names(4)) == pids
        assert sleeper.poll() is None, "the stall ended before it was noticed"

        # When Redis answers again, the recovery is logged once and the workers were never touched
        out, _ = sleeper.communicate(timeout=STALL_S + 10)
        assert out.strip() == "OK"
        wait_until("redis_ok logged", lambda: journal(c, "dqagent", "DQAGENT_EVENT=redis_ok"), timeout=40)
    finally:
        if sleeper.poll() is None:
            sleeper.kill()
        sleeper.communicate()  # reaps it and closes its pipe
    assert len(journal(c, "dqagent", "DQAGENT_EVENT=redis_error")) == 1
    assert main_pids(c, worker_names(4)) == pids
    assert not journal(c, "dqagent", "DQAGENT_EVENT=scale_down")
    wait_until("normal status again", lambda: "4 running of 4 wanted; queue 40" in c.unit_property("dqagent.service",
                                                                                       "StatusText"))
    print(f"stall noticed after {noticed_s:.1f}s (REDIS_TIMEOUT={REDIS_TIMEOUT_S}, CHECK_INTERVAL={CHECK_INTERVAL_S})")

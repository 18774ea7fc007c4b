"""systemd's start limits: demand that flips every second must not drive a worker unit into `start-limit-hit`.

The worker template allows 5 starts in 60 s (StartLimitBurst=5, StartLimitIntervalSec=60s); a unit past it
stays failed with Result=start-limit-hit. With MIN_PROCESSES=0, CHECK_INTERVAL=1 and a backlog that appears
and vanishes every second, `step` (no cooldown of its own) and `target` (SCALE_DOWN_WINDOW=0) would start
and stop the same numbers once a second; the agent's start-limit rule (`dqagent.core.startlimit`) must keep
every unit under its burst. Cheap `/bin/sleep` workers, one container, the two policies one after the other
(a reload between them).

systemd forgets a start count when it unloads an inactive unit (CollectMode=inactive), so a worker no other
unit names starts afresh after each stop. A unit stays loaded, its count with it, while another loaded unit
refers to it; here an operator's unit ordered After= the first workers (as a monitoring or backup unit might
be), which is what lets the agent's own churn reach the limit.
"""

from __future__ import annotations

import threading
import time

from testbed.agent import install, journal, set_backlog
from testbed.nspawn import Container
from testbed.redis import RedisServer
from testbed.wait import wait_until

FLIP_S = 60.0


def start_limit_hits(c: Container) -> list[str]:
    """Every journal line of systemd's that says a unit hit its start limit (any unit, since the boot)."""
    out = c.run(["journalctl", "-o", "cat", "--no-pager", "-g", "start-limit-hit|Start request repeated"],
                check=False).stdout
    return [line for line in out.splitlines() if line.strip() and "dramatiq-worker@" in line]


def worker_results(c: Container) -> dict[str, str]:
    out = c.systemctl("list-units", "dramatiq-worker@*", "--plain", "--no-legend", "--all").stdout
    units = [line.split()[0] for line in out.splitlines() if line.strip()]
    return {u: c.unit_property(u, "Result") for u in units}


def keep_loaded(c: Container, numbers: range) -> None:
    """An operator's unit ordered after the workers `numbers`: systemd keeps them (and their start counts) loaded."""
    after = " ".join(f"dramatiq-worker@{n}.service" for n in numbers)
    c.write("/etc/systemd/system/after-workers.service",
            f"[Unit]\nAfter={after}\n[Service]\nType=oneshot\nRemainAfterExit=yes\nExecStart=/bin/true\n")
    c.systemctl("daemon-reload")
    c.systemctl("start", "after-workers.service")


def flip(redis: RedisServer, seconds: float) -> int:
    """A backlog of 40 and none, alternating every second for `seconds`; returns the number of flips."""
    flips = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        set_backlog(redis, 40 if flips % 2 == 0 else 0)
        flips += 1
        time.sleep(1.0)
    set_backlog(redis, 0)
    return flips


def starts_of(c: Container) -> int:
    """Scale-ups the agent logged so far (it did churn: the test would prove nothing otherwise)."""
    return len(journal(c, "dqagent", "DQAGENT_EVENT=scale_up"))


def test_flipping_demand_never_hits_the_start_limit(fresh_container: Container, redis_server: RedisServer) -> None:
    c = fresh_container
    common = dict(MIN_PROCESSES=0, MAX_PROCESSES=3, CHECK_INTERVAL=1, DEMAND_POLL_INTERVAL=1,
                  PROCESS_STARTUP_DELAY=0.5, GRACEFUL_SHUTDOWN_TIMEOUT=5)
    install(c, redis_server, SCALING_POLICY="step", **common)
    keep_loaded(c, range(1, 13))
    wait_until("the agent's first decision", lambda: journal(c, "dqagent", "DQAGENT_EVENT=decision"), timeout=30)
    seen: list[dict[str, str]] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            seen.append(worker_results(c))
            time.sleep(1.0)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        # When the backlog flips every second for 60 s under `step`
        before = starts_of(c)
        flip(redis_server, FLIP_S)
        step_starts = starts_of(c) - before
        # Then the pool did follow the demand (it scaled up more than once) ...
        assert step_starts >= 3, step_starts
        # ... and no worker unit hit its start limit
        assert start_limit_hits(c) == []
        # When the same under `target` with no scale-down window (a reload switches the policy)
        c.write("/etc/dqagent/dqagent.env", c.run(["cat", "/etc/dqagent/dqagent.env"]).stdout.replace(
            "SCALING_POLICY=step", "SCALING_POLICY=target\nSCALE_DOWN_WINDOW=0\nTARGET_PER_WORKER=10"))
        c.systemctl("reload", "dqagent")
        before = starts_of(c)
        flip(redis_server, FLIP_S)
        target_starts = starts_of(c) - before
        assert target_starts >= 3, target_starts
        assert start_limit_hits(c) == []
    finally:
        stop.set()
        sampler.join()
    # And no unit was ever seen failed with start-limit-hit
    assert not [r for results in seen for r in results.values() if r == "start-limit-hit"], seen
    # And with the backlog gone the pool settles at MIN (0)
    wait_until("the pool back at 0", lambda: not [u for u, r in worker_results(c).items()
                                                  if c.unit_property(u, "ActiveState") == "active"], timeout=60)
    print(f"\nscale-ups during the flips: step {step_starts}, target {target_starts}")

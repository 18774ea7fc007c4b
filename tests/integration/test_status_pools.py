"""`dqagent status` and `scale-up/-down --pool` with two pools, on live systemd and Redis.

The agent is not started (its pool handling is tested elsewhere): the commands run as root, so no polkit
rule is involved. Workers are cheap `/bin/sleep infinity` processes.
"""

from __future__ import annotations

import json

from testbed.agent import dqagent, install, set_backlog
from testbed.nspawn import Container
from testbed.redis import RedisServer
from testbed.wait import wait_until

OLD_KEYS = {"queue_length", "current_processes", "min_processes", "max_processes", "scale_up_threshold",
            "scale_down_threshold", "monitoring_active", "process_list"}
IO_POOL = 'DRAMATIQ_QUEUE_NAME=ioq\nDRAMATIQ_COMMAND="/bin/sleep infinity"\nMIN_PROCESSES=0\nMAX_PROCESSES=3\n' \
          "POOL_PRIORITY=5\n"


def listed(c: Container, pattern: str = "dramatiq-worker@*") -> list[str]:
    out = c.systemctl("list-units", pattern, "--plain", "--no-legend", "--state=running").stdout
    return sorted(line.split()[0] for line in out.splitlines() if line.strip())


def test_two_pools_in_status_and_scale_per_pool(fresh_container: Container, redis_server: RedisServer) -> None:
    c = fresh_container
    install(c, redis_server, now=False, MIN_PROCESSES=1, MAX_PROCESSES=4)
    c.write("/etc/dqagent/pools.d/io.env", IO_POOL)

    # Given two default-pool workers, then one of pool io started with --pool
    dqagent(c, "scale-up", "--processes", "2")
    result = dqagent(c, "scale-up", "--pool", "io")
    assert "dramatiq-worker@io-1.service" in result.stdout, result.stdout
    wait_until("both pools run", lambda: listed(c) == ["dramatiq-worker@1.service", "dramatiq-worker@2.service",
                                                       "dramatiq-worker@io-1.service"])
    # systemd lists both pools under one pattern, and one pool under its own
    assert listed(c, "dramatiq-worker@io-*") == ["dramatiq-worker@io-1.service"]
    set_backlog(redis_server, 7)
    set_backlog(redis_server, 3, queue="ioq")

    # Then status --json keeps the old keys for the default pool and has both pools
    report = json.loads(dqagent(c, "status", "--json").stdout)
    assert set(report) >= OLD_KEYS
    assert (report["queue_length"], report["current_processes"]) == (7, 2)
    assert [p["unit"] for p in report["process_list"]] == ["dramatiq-worker@1.service", "dramatiq-worker@2.service"]
    assert list(report["pools"]) == ["default", "io"] and report["host_max_processes"] is None
    io = report["pools"]["io"]
    assert (io["queue_length"], io["current_processes"], io["max_processes"], io["pool_priority"]) == (3, 1, 3, 5)
    [unit] = io["process_list"]
    assert unit["unit"] == "dramatiq-worker@io-1.service"
    assert unit["pid"] == int(c.unit_property("dramatiq-worker@io-1.service", "MainPID"))
    assert report["pools"]["default"]["current_processes"] == 2 and report["undeclared_workers"] == []

    text = dqagent(c, "status").stdout
    assert "--- pool io (/etc/dqagent/pools.d/io.env), priority 5 ---" in text, text
    assert "pools: 2 (default, io), workers running: 3, host max: no cap" in text

    # An unknown pool: one line naming --pool and the pools there are, exit 78, nothing started
    bad = dqagent(c, "scale-up", "--pool", "nosuch", check=False)
    assert bad.returncode == 78 and bad.stderr.count("\n") == 1
    assert "--pool" in bad.stderr and "default, io" in bad.stderr
    assert len(listed(c)) == 3

    # scale-down --pool stops only that pool's worker
    dqagent(c, "scale-down", "--pool", "io")
    wait_until("io stopped", lambda: listed(c) == ["dramatiq-worker@1.service", "dramatiq-worker@2.service"])

    # A pool file removed while its unit runs: listed apart, counted nowhere
    dqagent(c, "scale-up", "--pool", "io")
    c.run(["rm", "/etc/dqagent/pools.d/io.env"])
    report = json.loads(dqagent(c, "status", "--json").stdout)
    assert list(report["pools"]) == ["default"] and report["current_processes"] == 2
    assert [(u["unit"], u["pool"]) for u in report["undeclared_workers"]] == [("dramatiq-worker@io-1.service", "io")]
    assert "undeclared pools (io): 1 worker units" in dqagent(c, "status").stdout

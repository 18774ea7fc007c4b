"""The bench leaves nothing behind: container, mounts and Redis stopped by PID; the host's /tmp untouched."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

from testbed.nspawn import Container, require_bench
from testbed.redis import RedisServer


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"


def test_two_containers_in_a_row_clean_up_and_spare_host_tmp() -> None:
    require_bench()
    sentinel = Path("/tmp") / f"dqagent-bench-sentinel-{uuid.uuid4().hex}"
    sentinel.write_text("host file")
    try:
        for _ in range(2):
            c = Container()
            r = RedisServer()
            try:
                # The container's systemd-tmpfiles (boot and an explicit run) only sees its own /tmp
                c.run(["systemd-tmpfiles", "--clean", "--remove"], check=False)
                assert c.run(["test", "-e", str(sentinel)], check=False).returncode == 1
                # and a write to the host's files inside goes to the tmpfs upper layer only
                c.run(["rm", "-f", "/etc/debian_version"])
                assert Path("/etc/debian_version").exists()
            finally:
                pids = (c.proc.pid, c.leader, r.proc.pid)
                c.stop()
                r.stop()
            assert not any(_alive(p) for p in pids)
            assert not c.root_dir.exists()
            assert sentinel.read_text() == "host file"
    finally:
        sentinel.unlink()

"""Pools on a real systemd 252: the agent's user (polkit) starts a pool's unit, which runs the pool's command as
the pool's user, in the pool's slice, with its limits; a single-pool install upgraded keeps its workers."""

from __future__ import annotations

import subprocess

from testbed.agent import (
    DQAGENT,
    REPO,
    dqagent,
    install,
    make_venv,
    running_workers,
    settings_text,
    worker_names,
)
from testbed.nspawn import Container
from testbed.redis import RedisServer
from testbed.wait import wait_until

IO_POOL = ("DRAMATIQ_QUEUE_NAME=ioq\nDRAMATIQ_COMMAND=/bin/sleep 4242\nWORKER_USER=iouser\n"
           "WORKER_DIRECTORY=/srv/io\nGRACEFUL_SHUTDOWN_TIMEOUT=7\nWORKER_MEMORY_MAX=300M\nPOOL_MEMORY_MAX=1G\n"
           "POOL_CPU_QUOTA=150%\n")
IO_SLICE = "system-dramatiq\\x2dworker-io.slice"
#: The commit whose layout is the single-pool one (the base of pools): its template runs `worker-exec` alone.
SINGLE_POOL_COMMIT = "af08635"  # the last commit before pools


def _cmdline(c: Container, unit: str) -> list[str]:
    pid = c.unit_property(unit, "MainPID")
    return c.run(["cat", f"/proc/{pid}/cmdline"], check=False).stdout.split("\0") if pid != "0" else []


def test_the_agent_user_starts_a_pool_unit_that_runs_the_pools_command_user_and_limits(
        fresh_container: Container, redis_server: RedisServer) -> None:
    c = fresh_container
    c.run(["useradd", "--system", "--no-create-home", "iouser"])
    c.write("/etc/dqagent/pools.d/io.env", IO_POOL)
    install(c, redis_server, now=False, WORKER_MEMORY_MAX="200M")
    started = c.run(["systemctl", "--no-ask-password", "start", "dramatiq-worker@io-1.service"], user="dqagent",
                    check=False)
    assert started.returncode == 0, started.stderr
    refused = c.run(["systemctl", "--no-ask-password", "start", "dramatiq-worker@default-1.service"],
                    user="dqagent", check=False)
    assert refused.returncode != 0 and "Interactive authentication required" in refused.stderr, refused.stderr
    unit = "dramatiq-worker@io-1.service"
    wait_until("io-1 runs the pool's command (worker-exec exec()s it)",
               lambda: _cmdline(c, unit)[:2] == ["/bin/sleep", "4242"])
    pid = c.unit_property(unit, "MainPID")
    assert c.run(["ps", "-o", "user=", "-p", pid]).stdout.strip() == "iouser"
    assert c.run(["readlink", f"/proc/{pid}/cwd"]).stdout.strip() == "/srv/io"
    props = dict(line.split("=", 1) for line in c.systemctl(
        "show", unit, "-p", "User", "-p", "Slice", "-p", "MemoryMax", "-p", "TimeoutStopUSec", "-p", "ControlGroup"
    ).stdout.splitlines())
    assert props == {"User": "iouser", "Slice": IO_SLICE, "MemoryMax": str(300 * 1024**2), "TimeoutStopUSec": "7s",
                     "ControlGroup": f"/system.slice/system-dramatiq\\x2dworker.slice/{IO_SLICE}/{unit}"}
    assert c.unit_property(IO_SLICE, "MemoryMax") == str(1024**3)
    assert c.unit_property(IO_SLICE, "CPUQuotaPerSecUSec") == "1.500000s"
    assert c.unit_property("dramatiq-worker@1.service", "MemoryMax") == str(200 * 1024**2)  # the default pool's
    checked = dqagent(c, "check", "--offline", check=False).stdout
    assert "ok: pool io: its drop-ins are in place" in checked and "FAIL: pool io" not in checked, checked
    again = c.run([DQAGENT, "--env-file", "/etc/dqagent/dqagent.env", "install"])
    assert again.stdout.strip() == "already installed: nothing changed"
    # The pool file goes: install removes its drop-ins (not the unit's running process: stopped first here)
    c.systemctl("stop", unit)
    c.run(["rm", "/etc/dqagent/pools.d/io.env"])
    gone = c.run([DQAGENT, "--env-file", "/etc/dqagent/dqagent.env", "install"]).stdout
    assert "removed 1001 drop-ins of pools" in gone
    assert not list((c.root / "etc/systemd/system").glob("*io-*"))


def test_a_single_pool_install_upgraded_keeps_its_workers_names_and_pids(
        fresh_container: Container, redis_server: RedisServer) -> None:
    c = fresh_container
    old_src = c.root / "opt/old-src"
    old_src.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(REPO), "archive", SINGLE_POOL_COMMIT, "dqagent", "packaging"],
                             capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(old_src)], input=archive, check=True)
    script = make_venv(c, "/opt/dq", package="/opt/old-src/dqagent")
    install(c, redis_server, dqagent_script=script, MIN_PROCESSES=2)
    wait_until("2 workers", lambda: running_workers(c) == worker_names(2))
    template = c.root / "etc/systemd/system/dramatiq-worker@.service"
    assert "worker-exec\n" in template.read_text()
    pids = {u: c.unit_property(u, "MainPID") for u in worker_names(2)}
    # The upgrade: this checkout's package in the same venv, then install --now
    c.run(["rm", "-rf", "/opt/old-src"])
    site = c.run(["/opt/dq/bin/python", "-c", "import dqagent, os; print(os.path.dirname(dqagent.__file__))"]
                 ).stdout.strip()
    c.run(["rm", "-rf", site])
    c.run(["cp", "-rL", str(REPO / "dqagent"), site])
    upgraded = c.run([script, "--env-file", "/etc/dqagent/dqagent.env", "install", "--now"], timeout=240)
    assert "wrote /etc/systemd/system/dramatiq-worker@.service" in upgraded.stdout
    assert "worker-exec %i\n" in template.read_text()
    assert running_workers(c) == worker_names(2)
    assert {u: c.unit_property(u, "MainPID") for u in worker_names(2)} == pids
    # A worker the upgraded agent starts (MIN_PROCESSES 3 on reload) runs the default pool's command through
    # `worker-exec 3` (started by hand, the agent's next check would stop it again: the queue is empty)
    c.write("/etc/dqagent/dqagent.env", settings_text(redis_server, MIN_PROCESSES=3))
    c.systemctl("reload", "dqagent")
    wait_until("@3 runs the default pool's command",
               lambda: _cmdline(c, "dramatiq-worker@3.service")[:2] == ["/bin/sleep", "infinity"])

"""dqagent inside the bench container, installed exactly as an operator installs it, and what it did there."""

from __future__ import annotations

import json
import re
import sys
import sysconfig
import time
from pathlib import Path
from typing import Any

from testbed.nspawn import CHECKOUT, Container
from testbed.redis import RedisServer
from testbed.wait import wait_until

REPO = CHECKOUT
VENV_BIN = Path(sys.executable).parent
DQAGENT = str(VENV_BIN / "dqagent")
PYTHON = str(VENV_BIN / "python")
QUEUE = "dqtest"
#: The sample Dramatiq app (`dqtestapp`) that real workers on the bench run.
APP_DIR = REPO / "testbed" / "app"


def make_reachable(c: Container) -> None:
    """Let unprivileged users in the container traverse to the checkout and venv (overlay only)."""
    for path in {REPO, VENV_BIN.parent, Path(PYTHON).resolve().parent}:
        for parent in [path, *path.parents]:
            target = c.root / str(parent).lstrip("/")
            if target.exists():
                target.chmod(target.stat().st_mode | 0o005)


def make_venv(c: Container, path: str, copies: bool = False, owner: str | None = None,
              package: str | None = None) -> str:
    """A venv at `path` inside the container with dqagent installed into it (no network, no build).

    `--copies` puts a real interpreter binary in the venv. dqagent is installed as pip lays out a
    wheel: the package copied into the venv's site-packages and a `dqagent` entry-point script whose
    `#!` names the venv's python; its dependencies come from the checkout's venv through a `.pth`
    line (their compiled wheels match Debian's python3). `package`: another dqagent package directory inside
    the container (e.g. an older version's), instead of the checkout's. Returns the venv's `dqagent` script.
    """
    c.run(["python3", "-m", "venv", "--without-pip", *(["--copies"] if copies else []), path])
    site = c.run([f"{path}/bin/python", "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"]
                 ).stdout.strip()
    c.write(f"{site}/dqagent-deps.pth", sysconfig.get_path("purelib") + "\n")
    c.run(["cp", "-rL", package or str(REPO / "dqagent"), f"{site}/dqagent"])
    script = f"{path}/bin/dqagent"
    c.write(script, f"#!{path}/bin/python\nimport sys\nfrom dqagent.cli.main import main\n"
            "if __name__ == '__main__':\n    sys.exit(main())\n", mode=0o755)
    if owner:
        c.run(["chown", "-R", f"{owner}:", path])
    return script


def settings_text(redis: RedisServer, **overrides: Any) -> str:
    values: dict[str, Any] = {
        "REDIS_HOST": "127.0.0.1", "REDIS_PORT": redis.port, "DRAMATIQ_QUEUE_NAME": QUEUE,
        "DRAMATIQ_COMMAND": "/bin/sleep infinity", "MIN_PROCESSES": 1, "MAX_PROCESSES": 4,
        "CHECK_INTERVAL": 1, "PROCESS_STARTUP_DELAY": 0.5, "GRACEFUL_SHUTDOWN_TIMEOUT": 5,
        "LOG_FILE": "", "LOG_LEVEL": "DEBUG",
        # PSI is host-wide: other tests and jobs on this machine put CPU pressure on it. Tests that are not
        # about the guard must not depend on it; tests/integration/test_guard.py turns it on.
        "GUARD": "off",
    }
    values.update(overrides)
    return "".join(f"{k}={v}\n" if " " not in str(v) else f'{k}="{v}"\n' for k, v in values.items())


def install(c: Container, redis: RedisServer, now: bool = True, watchdog_s: int | None = None,
            dqagent_script: str = DQAGENT, **overrides: Any) -> None:
    """Write /etc/dqagent/dqagent.env, then `dqagent install [--now]` as root inside the container."""
    make_reachable(c)
    c.write("/etc/dqagent/dqagent.env", settings_text(redis, **overrides))
    if watchdog_s is not None:
        c.write("/etc/systemd/system/dqagent.service.d/10-test.conf",
                f"[Service]\nWatchdogSec={watchdog_s}s\n")
    c.run([dqagent_script, "--env-file", "/etc/dqagent/dqagent.env", "install", *(["--now"] if now else [])],
          timeout=240)


def dqagent(c: Container, *args: str, user: str | None = None, check: bool = True) -> Any:
    return c.run([DQAGENT, "--env-file", "/etc/dqagent/dqagent.env", *args], user=user, check=check)


def running_workers(c: Container) -> list[str]:
    out = c.systemctl("list-units", "dramatiq-worker@*", "--plain", "--no-legend", "--state=running").stdout
    names = [line.split()[0] for line in out.splitlines() if line.strip()]
    return sorted(names, key=_by_pool_and_number)


def _by_pool_and_number(unit: str) -> tuple[str, int]:
    """`dramatiq-worker@3.service` -> ("", 3), `dramatiq-worker@io-12.service` -> ("io", 12)."""
    pool, _, number = unit.split("@")[1].removesuffix(".service").rpartition("-")
    return pool, int(number)


def worker_names(n: int) -> list[str]:
    return [f"dramatiq-worker@{i}.service" for i in range(1, n + 1)]


def main_pids(c: Container, units: list[str]) -> dict[str, str]:
    return {u: c.unit_property(u, "MainPID") for u in units}


def sigkill_worker(c: Container, unit: str) -> str:
    """SIGKILL a worker unit's main process and its children, as the OOM killer or a crash would; returns
    the killed main PID.

    Sent with kill(2) inside the container, not `systemctl kill`: this bench's cgroup v1 kernel answers
    systemd's cgroup kill with EIO now and then ("Failed to kill control group ... Input/output error"),
    which leaves the worker running (seen under parallel load: its heartbeat went on for 40 s).
    """
    pid = c.unit_property(unit, "MainPID")
    assert pid not in ("", "0"), f"{unit} has no main process"
    c.run(["pkill", "--signal", "KILL", "-P", pid], check=False)
    c.run(["kill", "-KILL", pid])
    wait_until(f"{unit}'s process {pid} gone", lambda: c.run(["kill", "-0", pid], check=False).returncode != 0,
               timeout=10)
    return pid


def journal(c: Container, unit: str = "dqagent", *matches: str) -> list[dict[str, Any]]:
    out = c.run(["journalctl", "-u", unit, "-o", "json", "--no-pager", *matches]).stdout
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def set_backlog(redis: RedisServer, n: int, queue: str = QUEUE) -> None:
    """Make the broker hold exactly `n` ready messages (ids, and bodies with only the enqueue time, in ms, that
    the oldest-age read takes; no worker consumes them here)."""
    redis.cli("DEL", f"dramatiq:{queue}", f"dramatiq:{queue}.msgs")
    if n:
        ids = [f"m{i}" for i in range(n)]
        redis.cli("RPUSH", f"dramatiq:{queue}", *ids)
        body = json.dumps({"message_timestamp": int(time.time() * 1000)})
        pairs = [x for i in ids for x in (i, body)]
        redis.cli("HSET", f"dramatiq:{queue}.msgs", *pairs)


def exposure(c: Container, unit: str) -> float:
    """`systemd-analyze security`'s overall exposure of a loaded unit (0 best .. 10)."""
    out = c.run(["systemd-analyze", "security", "--no-pager", unit]).stdout
    match = re.search(r"Overall exposure level for \S+: ([0-9.]+)", out)
    assert match, out[-500:]
    return float(match.group(1))

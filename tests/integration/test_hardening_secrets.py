"""Hardening measured by systemd-analyze, and the Redis password kept out of every place it could leak."""

from __future__ import annotations

import json
import re
from pathlib import Path

from tests.bench import Container, RedisServer
from tests.integration.agentbench import (
    DQAGENT,
    dqagent,
    install,
    running_workers,
    set_backlog,
    wait_until,
    worker_names,
)


def exposure(c: Container, unit: str) -> float:
    out = c.run(["systemd-analyze", "security", "--no-pager", unit]).stdout
    match = re.search(r"Overall exposure level for \S+: ([0-9.]+)", out)
    assert match, out[-500:]
    return float(match.group(1))


def test_agent_unit_exposure_is_at_most_2(fresh_container: Container, redis_server: RedisServer) -> None:
    c = fresh_container
    install(c, redis_server, MIN_PROCESSES=1)
    wait_until("worker", lambda: running_workers(c) == worker_names(1))
    agent = exposure(c, "dqagent.service")
    worker = exposure(c, "dramatiq-worker@1.service")
    print(f"\nsystemd-analyze security: dqagent.service {agent}, dramatiq-worker@1.service {worker}")
    assert agent <= 2.0
    assert worker <= 4.0


def _everything_visible(c: Container) -> str:
    """Journal, status output, every command line and the agent's Environment, as one text."""
    parts = [
        c.run(["journalctl", "-o", "json", "--no-pager"]).stdout,
        dqagent(c, "status").stdout, dqagent(c, "status", "--json").stdout,
        dqagent(c, "status", user="nobody").stdout,
        c.systemctl("show", "dqagent", "-p", "Environment").stdout,
        c.systemctl("show", "dramatiq-worker@1.service", "-p", "Environment").stdout,
    ]
    for proc in Path(c.root, "proc").iterdir():
        if proc.name.isdigit():
            try:
                parts.append((proc / "cmdline").read_bytes().decode(errors="replace"))
            except OSError:
                continue
    return "\n".join(parts)


def test_password_from_credential_works_and_never_leaks(fresh_container: Container,
                                                        redis_with_password: RedisServer) -> None:
    c, pw = fresh_container, redis_with_password
    install(c, pw, now=False, MIN_PROCESSES=1, MAX_PROCESSES=3)
    c.write("/etc/dqagent/redis-password", pw.password + "\n", mode=0o600)
    c.systemctl("start", "dqagent")
    set_backlog(pw, 100)
    wait_until("scaled with the authenticated Redis", lambda: len(running_workers(c)) == 3, timeout=30)
    report = json.loads(dqagent(c, "status", "--json").stdout)
    assert report["queue_length"] == 100
    assert pw.password not in _everything_visible(c)


def test_redis_url_with_credential_password_and_url_password_never_leak(fresh_container: Container,
                                                                       redis_with_password: RedisServer) -> None:
    c, pw = fresh_container, redis_with_password
    # REDIS_URL in the world-readable settings carries no password; the credential file does
    install(c, pw, now=False, MIN_PROCESSES=1, MAX_PROCESSES=3, REDIS_URL=f"redis://127.0.0.1:{pw.port}/0",
            REDIS_HOST="unused.invalid")
    c.write("/etc/dqagent/redis-password", pw.password + "\n", mode=0o600)
    c.systemctl("start", "dqagent")
    set_backlog(pw, 100)
    wait_until("scaled through REDIS_URL", lambda: len(running_workers(c)) == 3, timeout=30)
    assert pw.password not in _everything_visible(c)

    # A URL with a (wrong) password given on the environment is redacted in every message
    wrong = "wr0ng-" + pw.password
    result = c.run([DQAGENT, "--env-file", "/etc/dqagent/dqagent.env", "status"],
                   env={"REDIS_URL": f"redis://:{wrong}@127.0.0.1:{pw.port}/0", "REDIS_PASSWORD_FILE": ""})
    assert wrong not in result.stdout + result.stderr and pw.password not in result.stdout + result.stderr
    assert "redis://:***@127.0.0.1" in result.stdout
    assert "unavailable" in result.stdout

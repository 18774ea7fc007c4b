"""Hardening measured by systemd-analyze, and the Redis password kept out of every place it could leak."""

from __future__ import annotations

import json
from pathlib import Path

from testbed.agent import DQAGENT, dqagent, exposure, install, running_workers, set_backlog, worker_names
from testbed.nspawn import Container
from testbed.redis import RedisServer
from testbed.wait import wait_until


def test_agent_unit_exposure_is_at_most_2(fresh_container: Container, redis_server: RedisServer) -> None:
    c = fresh_container
    install(c, redis_server, MIN_PROCESSES=1)
    wait_until("worker", lambda: running_workers(c) == worker_names(1))
    agent = exposure(c, "dqagent.service")
    worker = exposure(c, "dramatiq-worker@1.service")
    print(f"\nsystemd-analyze security: dqagent.service {agent}, dramatiq-worker@1.service {worker}")
    assert agent <= 2.0
    assert worker <= 2.0  # measured 1.6: guards against a regression in the template


def _everything_visible(c: Container, as_nobody: bool = True) -> str:
    """Journal, status output, every command line and the agent's Environment, as one text."""
    parts = [
        c.run(["journalctl", "-o", "json", "--no-pager"]).stdout,
        dqagent(c, "status").stdout, dqagent(c, "status", "--json").stdout,
        dqagent(c, "status", user="nobody").stdout if as_nobody else "",
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


def test_redis_url_with_its_own_password_connects_and_never_leaks(fresh_container: Container,
                                                                  redis_with_password: RedisServer) -> None:
    c, pw = fresh_container, redis_with_password
    # Given the password inside REDIS_URL in the settings file, which the operator then makes
    # 0640 root:dqagent with the worker user in group dqagent (docs/operations.md, Secrets)
    install(c, pw, now=False, MIN_PROCESSES=1, MAX_PROCESSES=3, REDIS_URL=pw.url, REDIS_HOST="unused.invalid")
    assert f":{pw.password}@" in pw.url
    c.run(["chown", "root:dqagent", "/etc/dqagent/dqagent.env"])
    c.run(["chmod", "0640", "/etc/dqagent/dqagent.env"])
    c.run(["usermod", "-a", "-G", "dqagent", "dqworker"])
    # When the agent runs, it authenticates with the URL's password and scales with the backlog
    c.systemctl("start", "dqagent")
    set_backlog(pw, 100)
    wait_until("scaled through REDIS_URL's password", lambda: len(running_workers(c)) == 3, timeout=30)
    assert json.loads(dqagent(c, "status", "--json").stdout)["queue_length"] == 100
    # Then the password is nowhere visible
    assert pw.password not in _everything_visible(c, as_nobody=False)
    # And a user who may not read the settings gets one line, no traceback, no secret
    result = dqagent(c, "status", user="nobody", check=False)
    assert result.returncode == 78 and result.stdout == ""
    assert result.stderr.strip() == ("dqagent: invalid --env-file='/etc/dqagent/dqagent.env': "
                                     "cannot read it: Permission denied")

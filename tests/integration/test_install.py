"""`dqagent install` / `uninstall`: idempotent, never overwrites settings, removes what it added."""

from __future__ import annotations

import stat

from tests.bench import Container, RedisServer
from tests.integration.agentbench import DQAGENT, install, journal, running_workers, wait_until, worker_names

ADDED = ["/etc/systemd/system/dqagent.service", "/etc/systemd/system/dramatiq-worker@.service",
         "/usr/local/lib/systemd/catalog/dqagent.catalog",
         "/etc/polkit-1/rules.d/50-dqagent.rules", "/etc/sysusers.d/dqagent.conf", "/etc/logrotate.d/dqagent"]


def _mode(c: Container, path: str) -> tuple[int, int]:
    st = (c.root / path.lstrip("/")).stat()
    return stat.S_IMODE(st.st_mode), st.st_uid


def test_install_twice_changes_nothing_and_keeps_settings(fresh_container: Container,
                                                         redis_server: RedisServer) -> None:
    c = fresh_container
    install(c, redis_server, MIN_PROCESSES=2)
    wait_until("2 workers", lambda: running_workers(c) == worker_names(2))
    settings = (c.root / "etc/dqagent/dqagent.env").read_text()
    again = c.run([DQAGENT, "--env-file", "/etc/dqagent/dqagent.env", "install", "--now"])
    assert again.stdout.strip() == "already installed: nothing changed"
    assert (c.root / "etc/dqagent/dqagent.env").read_text() == settings
    assert _mode(c, "/etc/dqagent/dqagent.env") == (0o644, 0)
    # the password: root's, readable by the agent's group (re-read on reload, issue 20), by nobody else
    assert _mode(c, "/etc/dqagent/redis-password") == (0o640, 0)
    assert c.run(["stat", "-c", "%G", "/etc/dqagent/redis-password"]).stdout.strip() == "dqagent"
    assert c.unit_property("dqagent.service", "UnitFileState") == "enabled"
    unit = (c.root / "etc/systemd/system/dqagent.service").read_text()
    assert f"ExecStart={DQAGENT} --env-file /etc/dqagent/dqagent.env start" in unit and "@" not in unit.split(
        "ExecStart=")[1].split("\n")[0]


def test_template_settings_file_holds_every_setting_and_loads(fresh_container: Container) -> None:
    c = fresh_container
    from dqagent.config import DEFAULTS

    c.run([DQAGENT, "--env-file", "/dev/null", "install"], env={"MIN_PROCESSES": "1"})
    text = (c.root / "etc/dqagent/dqagent.env").read_text()
    for key in DEFAULTS:
        assert key in text
    report = c.run([DQAGENT, "--env-file", "/etc/dqagent/dqagent.env", "status", "--json"]).stdout
    assert '"min_processes": 1' in report


def test_uninstall_stops_everything_and_purge_removes_settings(fresh_container: Container,
                                                               redis_server: RedisServer) -> None:
    c = fresh_container
    install(c, redis_server, MIN_PROCESSES=2)
    wait_until("2 workers", lambda: running_workers(c) == worker_names(2))
    out = c.run([DQAGENT, "uninstall"]).stdout
    assert running_workers(c) == []
    assert c.unit_property("dqagent.service", "ActiveState") == "inactive"
    for path in ADDED:
        assert not (c.root / path.lstrip("/")).exists(), path
        assert f"removed {path}" in out
    assert (c.root / "etc/dqagent/dqagent.env").exists()
    again = c.run([DQAGENT, "uninstall", "--purge"]).stdout
    assert not (c.root / "etc/dqagent").exists()
    assert "removed /etc/dqagent/dqagent.env" in again


def test_logrotate_rule_is_valid_and_the_agent_writes_on_after_a_rotation(fresh_container: Container,
                                                                           redis_server: RedisServer) -> None:
    c = fresh_container
    install(c, redis_server, MIN_PROCESSES=1, LOG_FILE="process_manager.log")
    log = c.root / "var/log/dqagent/process_manager.log"
    wait_until("the agent writes its log file", lambda: log.exists() and log.stat().st_size > 0)
    dry = c.run(["logrotate", "-d", "/etc/logrotate.d/dqagent"])
    assert "error" not in (dry.stdout + dry.stderr).lower(), dry.stderr
    assert "copytruncate" not in (c.root / "etc/logrotate.d/dqagent").read_text().replace("# No copytruncate", "")
    # When logrotate renames the file, the agent's handler reopens a new one and goes on writing
    c.run(["logrotate", "-f", "/etc/logrotate.d/dqagent"])
    assert (c.root / "var/log/dqagent/process_manager.log.1").exists()
    wait_until("new lines in a new process_manager.log", lambda: log.exists() and "decision" in log.read_text())
    # and a password-less install never complains about the (empty) password file
    assert not [r for r in journal(c) if r.get("DQAGENT_EVENT") == "password_unavailable"]

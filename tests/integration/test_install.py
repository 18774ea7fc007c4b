"""`dqagent install` / `uninstall`: idempotent, never overwrites settings, removes what it added."""

from __future__ import annotations

import stat

from testbed.agent import DQAGENT, install, journal, make_reachable, running_workers, settings_text, worker_names
from testbed.nspawn import Container
from testbed.redis import RedisServer
from testbed.wait import wait_until

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
    # the password: root's, readable by the agent's group (re-read on reload), by nobody else
    assert _mode(c, "/etc/dqagent/redis-password") == (0o640, 0)
    assert c.run(["stat", "-c", "%G", "/etc/dqagent/redis-password"]).stdout.strip() == "dqagent"
    # RabbitMQ's password file likewise (the unit's LoadCredential= needs it to exist, even empty)
    assert _mode(c, "/etc/dqagent/rabbitmq-password") == (0o640, 0)
    assert c.run(["stat", "-c", "%G", "/etc/dqagent/rabbitmq-password"]).stdout.strip() == "dqagent"
    assert c.unit_property("dqagent.service", "UnitFileState") == "enabled"
    unit = (c.root / "etc/systemd/system/dqagent.service").read_text()
    assert f"ExecStart={DQAGENT} --env-file /etc/dqagent/dqagent.env start" in unit and "@" not in unit.split(
        "ExecStart=")[1].split("\n")[0]


def test_template_settings_file_holds_every_setting_and_loads(fresh_container: Container) -> None:
    c = fresh_container
    from dqagent.settings.config import DEFAULTS

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


def test_install_under_umask_027_gives_a_running_agent_and_changes_nothing_the_second_time(
        fresh_container: Container, redis_server: RedisServer) -> None:
    """On a CIS-hardened host (umask 027) install made /etc/dqagent and /var/lib/dqagent
    0750 root:root, then refused its own directories, or the agent could not read its settings."""
    c = fresh_container
    make_reachable(c)
    hardened = ["sh", "-c", 'umask 027 && exec "$@"', "sh", DQAGENT, "--env-file", "/etc/dqagent/dqagent.env"]
    # Given a host with umask 027: the first install writes the commented settings file
    first = c.run([*hardened[:4], DQAGENT, "--env-file", "/dev/null", "install"], timeout=240)
    assert "Traceback" not in first.stderr
    for path, mode in (("/etc/dqagent", 0o755), ("/etc/dqagent/dqagent.env", 0o644), ("/var/lib/dqagent", 0o755),
                       ("/etc/systemd/system/dramatiq-worker@.service.d", 0o755)):
        assert _mode(c, path) == (mode, 0), path
    worker_uid = int(c.run(["id", "-u", "dqworker"]).stdout)
    assert _mode(c, "/var/lib/dqagent/worker") == (0o750, worker_uid)
    # When the operator fills it in (editing it in place keeps its mode) and installs with --now
    (c.root / "etc/dqagent/dqagent.env").write_text(settings_text(redis_server, MIN_PROCESSES=1))
    c.run([*hardened, "install", "--now"], timeout=240)
    # Then the agent runs and is READY (Type=notify: active only after READY=1), and a worker runs
    assert c.unit_property("dqagent.service", "ActiveState") == "active"
    wait_until("1 worker", lambda: running_workers(c) == worker_names(1))
    # And a second run changes nothing
    again = c.run([*hardened, "install", "--now"], timeout=240)
    assert again.stdout.strip() == "already installed: nothing changed", again.stdout
    # The workers' slice has its default TasksMax, as systemd reports it
    tasks = c.unit_property("system-dramatiq\\x2dworker.slice", "TasksMax")
    kernel = min(int(c.run(["cat", f"/proc/sys/kernel/{f}"]).stdout) for f in ("pid_max", "threads-max"))
    print(f"\nslice TasksMax={tasks}, kernel limit {kernel}")
    assert tasks.isdigit() and 0 < int(tasks) <= kernel * 0.34, (tasks, kernel)


def test_a_settings_file_the_service_users_cannot_read_is_refused_by_install_and_check(
        fresh_container: Container, redis_server: RedisServer) -> None:
    c = fresh_container
    make_reachable(c)
    c.write("/etc/dqagent/dqagent.env", settings_text(redis_server, MIN_PROCESSES=1), mode=0o640)
    refused = c.run([DQAGENT, "--env-file", "/etc/dqagent/dqagent.env", "install"], check=False, timeout=240)
    assert refused.returncode == 78, refused.stderr
    assert "/etc/dqagent/dqagent.env: not readable (the settings file) by user dqagent" in refused.stderr
    assert not (c.root / "etc/systemd/system/dqagent.service").exists()  # nothing written
    check = c.run([DQAGENT, "--env-file", "/etc/dqagent/dqagent.env", "check", "--offline"], check=False)
    assert check.returncode == 78 and "FAIL: /etc/dqagent/dqagent.env: not readable (the settings file)" in check.stdout


def test_a_value_that_would_inject_a_directive_is_refused_and_nothing_is_written(
        fresh_container: Container, redis_server: RedisServer) -> None:
    """The reported WORKER_DIRECTORY crashed install with a FileExistsError traceback,
    and only the order of its steps kept an `ExecStartPre=+` root line out of the worker template."""
    c = fresh_container
    make_reachable(c)
    injected = "/srv/app/x\\nExecStartPre=+/bin/sh -c 'id > /root/pwned'\\nX=/../../../../.."
    c.write("/etc/dqagent/dqagent.env", settings_text(redis_server) + f'WORKER_DIRECTORY="{injected}"\n')
    refused = c.run([DQAGENT, "--env-file", "/etc/dqagent/dqagent.env", "install", "--now"], check=False)
    assert refused.returncode == 78 and "Traceback" not in refused.stderr, refused.stderr
    assert refused.stderr.startswith("dqagent: invalid WORKER_DIRECTORY=") and refused.stderr.count("\n") == 1
    for path in ADDED:
        assert not (c.root / path.lstrip("/")).exists(), path
    assert not (c.root / "root/pwned").exists()

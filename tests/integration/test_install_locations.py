"""`dqagent install` from any Python: venvs under /root and /home made visible to the hardened units
(`ProtectHome=tmpfs` + `BindReadOnlyPaths=`), and what cannot work refused in one line, nothing written."""

from __future__ import annotations

from testbed.agent import (
    DQAGENT,
    exposure,
    install,
    journal,
    make_reachable,
    make_venv,
    running_workers,
    settings_text,
    worker_names,
)
from testbed.nspawn import Container
from testbed.redis import RedisServer
from testbed.wait import wait_until

#: Today's figures (systemd-analyze security, live, in the bench) before this change: the rendered
#: variants must not be worse.
AGENT_EXPOSURE, WORKER_EXPOSURE = 1.1, 1.6
WRITTEN = ["etc/systemd/system/dqagent.service", "etc/systemd/system/dramatiq-worker@.service",
           "usr/local/lib/systemd/catalog/dqagent.catalog",
           "etc/polkit-1/rules.d/50-dqagent.rules", "etc/sysusers.d/dqagent.conf", "etc/logrotate.d/dqagent"]


def _unit(c: Container, name: str) -> str:
    return (c.root / "etc/systemd/system" / name).read_text()


def test_venv_with_its_interpreter_under_root_installs_and_scales(fresh_container: Container,
                                                                  redis_server: RedisServer) -> None:
    c = fresh_container
    # Given dqagent pip-installed in a --copies venv under /root, and /root as Debian ships it (0700)
    script = make_venv(c, "/root/dqvenv", copies=True)
    make_reachable(c)
    c.run(["chmod", "0700", "/root"])
    # When it installs itself and starts
    install(c, redis_server, dqagent_script=script, MIN_PROCESSES=2)
    # Then both units see exactly the venv (plus whatever the import path needs), read-only
    for name in ("dqagent.service", "dramatiq-worker@.service"):
        text = _unit(c, name)
        assert "ProtectHome=tmpfs\n" in text and "BindReadOnlyPaths=/root/dqvenv\n" in text, text
        assert f"ExecStart={script} --env-file" in text
    wait_until("2 workers run dqagent worker-exec from /root", lambda: running_workers(c) == worker_names(2))
    assert c.unit_property("dqagent.service", "ActiveState") == "active"
    # And the hardening is not weaker than before
    agent, worker = exposure(c, "dqagent.service"), exposure(c, "dramatiq-worker@1.service")
    print(f"\nexposure with a venv under /root: dqagent.service {agent}, dramatiq-worker@1.service {worker}")
    assert agent <= AGENT_EXPOSURE and worker <= WORKER_EXPOSURE


def test_venv_and_worker_directory_under_home(fresh_container: Container, redis_server: RedisServer) -> None:
    c = fresh_container
    # Given user alice with a venv (symlinked interpreter) and the app directory in her 0750 home
    c.run(["useradd", "--create-home", "--shell", "/bin/sh", "alice"])
    c.run(["chmod", "0750", "/home/alice"])
    script = make_venv(c, "/home/alice/dqvenv", owner="alice")
    c.run(["install", "-d", "-o", "alice", "-g", "alice", "-m", "0750", "/home/alice/app"])
    c.write("/home/alice/app/show.py", "import os, time\nprint('cwd', os.getcwd(), flush=True)\ntime.sleep(10**6)\n")
    command = "/home/alice/dqvenv/bin/python show.py"  # relative: found only in WORKER_DIRECTORY
    # When dqagent installs from there with the workers as alice in her app directory
    install(c, redis_server, dqagent_script=script, MIN_PROCESSES=1, WORKER_USER="alice",
            WORKER_DIRECTORY="/home/alice/app", DRAMATIQ_COMMAND=command)
    worker_unit = _unit(c, "dramatiq-worker@.service")
    assert "BindReadOnlyPaths=/home/alice/app\n" in worker_unit and \
        "BindReadOnlyPaths=/home/alice/dqvenv\n" in worker_unit, worker_unit
    # Then the worker runs as alice, in her directory, and the agent scales
    wait_until("worker", lambda: running_workers(c) == worker_names(1))
    wait_until("worker printed its cwd", lambda: any(
        r.get("MESSAGE") == "cwd /home/alice/app" for r in journal(c, "dramatiq-worker@1")))
    assert c.unit_property("dramatiq-worker@1.service", "User") == "alice"
    agent, worker = exposure(c, "dqagent.service"), exposure(c, "dramatiq-worker@1.service")
    print(f"\nexposure with a venv under /home: dqagent.service {agent}, dramatiq-worker@1.service {worker}")
    assert agent <= AGENT_EXPOSURE and worker <= WORKER_EXPOSURE

    # And when alice, who owns that venv, plants a .pth file in it (code every interpreter of the venv runs)
    site = c.run(["/home/alice/dqvenv/bin/python", "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"]
                 ).stdout.strip()
    c.write(f"{site}/zz-planted.pth", "import os, sys; sys.stderr.write('planted-pth uid=%d\\n' % os.getuid())\n")
    c.run(["chown", "alice:", f"{site}/zz-planted.pth"])
    before = len(_planted(c))
    # Then `systemctl reload dqagent` runs it, but never as root (it ran as uid 0 with ExecReload=+)
    assert c.systemctl("reload", "dqagent").returncode == 0
    dqagent_uid = c.run(["id", "-u", "dqagent"]).stdout.strip()
    wait_until("the reload client's interpreter ran the planted line", lambda: len(_planted(c)) > before)
    assert set(_planted(c)) == {f"planted-pth uid={dqagent_uid}"}, _planted(c)


def _planted(c: Container) -> list[str]:
    """What the planted .pth line printed under dqagent.service (the agent and its ExecReload= client)."""
    return [str(r.get("MESSAGE")) for r in journal(c, "dqagent") if str(r.get("MESSAGE", "")).startswith("planted-pth")]


def _refused(c: Container, redis: RedisServer, **overrides: str) -> str:
    """Run install with these settings; assert exit 78, one stderr line, and nothing written."""
    make_reachable(c)
    c.write("/srv/dqtest/refused.env", settings_text(redis, **overrides))
    try:
        result = c.run([DQAGENT, "--env-file", "/srv/dqtest/refused.env", "install"], check=False)
    finally:
        c.run(["rm", "-rf", "/srv/dqtest"])
    assert result.returncode == 78, result
    assert result.stdout == "" and len(result.stderr.splitlines()) == 1, result.stderr
    for path in WRITTEN:
        assert not (c.root / path).exists(), path
    assert c.run(["getent", "passwd", "dqagent"], check=False).returncode == 2  # sysusers never ran
    return result.stderr.strip()


def test_command_under_tmp_is_refused_in_one_line(bench: Container, redis_server: RedisServer) -> None:
    bench.run(["install", "-D", "-m", "0755", "/bin/sleep", "/tmp/app/bin/sleep"])
    try:
        line = _refused(bench, redis_server, DRAMATIQ_COMMAND="/tmp/app/bin/sleep infinity")
    finally:
        bench.run(["rm", "-rf", "/tmp/app"])
    assert line == ("dqagent install: /tmp/app/bin/sleep: DRAMATIQ_COMMAND's executable is under /tmp, which "
                    "dramatiq-worker@.service cannot see (PrivateTmp=yes gives it an empty private /tmp); "
                    "fix: move it out of /tmp and /var/tmp (e.g. to /opt or /srv) and update the setting "
                    "that names it")


def test_worker_directory_the_worker_user_cannot_enter_is_refused(bench: Container,
                                                                  redis_server: RedisServer) -> None:
    bench.run(["install", "-d", "-m", "0755", "/srv/private/app"])
    bench.run(["chmod", "0700", "/srv/private"])
    try:
        line = _refused(bench, redis_server, WORKER_DIRECTORY="/srv/private/app")
    finally:
        bench.run(["rm", "-rf", "/srv/private"])
    assert line.startswith("dqagent install: /srv/private: not traversable (on the way to WORKER_DIRECTORY) "
                           "by user dqworker (mode 0700, owner uid 0, checked with the 'other' bits: the "
                           "user does not exist yet), which dramatiq-worker@.service runs as; "
                           "fix: chmod o+x /srv/private"), line


def test_install_refuses_without_polkitd(bench: Container, redis_server: RedisServer) -> None:
    bench.run(["mv", "/usr/lib/polkit-1/polkitd", "/usr/lib/polkit-1/polkitd.hidden"])
    try:
        line = _refused(bench, redis_server)
    finally:
        bench.run(["mv", "/usr/lib/polkit-1/polkitd.hidden", "/usr/lib/polkit-1/polkitd"])
    assert line.startswith("dqagent install: polkitd is not installed (/usr/lib/polkit-1/polkitd is missing)")
    assert "fix: apt-get install polkitd" in line


def test_root_workers_are_refused_without_the_opt_in(bench: Container, redis_server: RedisServer) -> None:
    line = _refused(bench, redis_server, WORKER_USER="root")
    assert line.startswith("dqagent: invalid WORKER_USER='root': workers as root are refused")
    assert line.endswith("or set ALLOW_ROOT_WORKERS=yes to accept root workers (without capabilities)")

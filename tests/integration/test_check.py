"""`dqagent check`: one line per check, exit 0 on a good install, the right FAIL line otherwise;
`install --now` runs it and does not start the agent on a failure."""

from __future__ import annotations

from testbed.agent import DQAGENT, dqagent, install, journal, running_workers, settings_text, worker_names
from testbed.nspawn import Container
from testbed.redis import RedisServer
from testbed.wait import wait_until


def _check(c: Container) -> tuple[int, list[str]]:
    result = dqagent(c, "check", check=False)
    assert result.stderr == "" and "Traceback" not in result.stdout, result
    return result.returncode, result.stdout.splitlines()


def _fails(lines: list[str]) -> list[str]:
    return [ln for ln in lines if ln.startswith("FAIL: ")]


def test_check_passes_then_names_each_broken_part(fresh_container: Container,
                                                  redis_with_password: RedisServer) -> None:
    c, pw = fresh_container, redis_with_password
    # Given a good install against a Redis that requires a password
    install(c, pw, now=False, MIN_PROCESSES=1)
    c.write("/etc/dqagent/redis-password", pw.password + "\n", mode=0o600)
    c.run([DQAGENT, "--env-file", "/etc/dqagent/dqagent.env", "install", "--now"], timeout=240)
    wait_until("worker", lambda: running_workers(c) == worker_names(1))
    code, lines = _check(c)
    assert code == 0 and _fails(lines) == [], lines
    assert all(ln.startswith(("ok: ", "hint: ")) for ln in lines)
    # And the worker (`/bin/sleep`, no Dramatiq app with the opt-in) gives no report: a hint, not a FAIL
    assert [ln for ln in lines if ln.startswith("hint: ")] == [
        "hint: none of the 1 running workers reports what it runs: add `broker.add_middleware(WorkerReport())` "
        "(from dqagent.dramatiq import WorkerReport) to the app so that scale-down stops idle workers first, never "
        "cuts a running task short while one is idle, and WORKER_HUNG_AFTER can restart hung workers (README, "
        "\"Which worker is busy\")"]
    assert f"ok: Redis at redis://127.0.0.1:{pw.port}/0 answers with the configured credentials" in lines
    assert "ok: queue dqtest (namespace dramatiq) is empty: Redis holds no key for it (nothing enqueued yet, " \
           "or everything processed)" in lines
    assert any(ln.startswith("ok: polkitd is installed and org.freedesktop.PolicyKit1 is ") for ln in lines)

    # When the settings file has keys no setting declares (typos a new user makes)
    env = "/etc/dqagent/dqagent.env"
    c.write(env, settings_text(pw, MIN_PROCESSES=1, MAX_PROCESS=8, DRAMATIQ_COMAND="/bin/false"))
    code, lines = _check(c)
    assert code == 78 and _fails(lines) == [
        f"FAIL: MAX_PROCESS: unknown setting; did you mean MAX_PROCESSES? (a key of {env} that dqagent ignores; "
        "fix: correct or remove it)",
        f"FAIL: DRAMATIQ_COMAND: unknown setting; did you mean DRAMATIQ_COMMAND? (a key of {env} that dqagent "
        "ignores; fix: correct or remove it)"], lines
    # and the agent warns once per key at start, and again at each reload
    def unknown() -> list[str]:
        return [r["KEY"] for r in journal(c) if r.get("DQAGENT_EVENT") == "unknown_setting"]
    c.systemctl("restart", "dqagent")
    wait_until("unknown_setting at start", lambda: len(unknown()) >= 2)
    assert unknown() == ["MAX_PROCESS", "DRAMATIQ_COMAND"]
    c.systemctl("reload", "dqagent")
    wait_until("unknown_setting on reload", lambda: len(unknown()) >= 4)
    assert unknown() == ["MAX_PROCESS", "DRAMATIQ_COMAND"] * 2
    c.write(env, settings_text(pw, MIN_PROCESSES=1))

    # When the polkit rule is missing
    c.run(["rm", "/etc/polkit-1/rules.d/50-dqagent.rules"])
    code, lines = _check(c)
    assert code == 78 and _fails(lines) == [
        "FAIL: polkit rule /etc/polkit-1/rules.d/50-dqagent.rules is missing: the agent may not start or stop "
        "workers; fix: dqagent install"]
    dqagent(c, "install")

    # When GRACEFUL_SHUTDOWN_TIMEOUT changed but the template was not re-installed
    c.write("/etc/dqagent/dqagent.env", settings_text(pw, MIN_PROCESSES=1, GRACEFUL_SHUTDOWN_TIMEOUT=12))
    code, lines = _check(c)
    fails = _fails(lines)
    assert code == 78 and len(fails) == 3, lines
    assert fails[0].startswith("FAIL: /etc/systemd/system/dqagent.service is out of date for these settings")
    assert fails[1] == ("FAIL: /etc/systemd/system/dramatiq-worker@.service is out of date for these settings "
                        "(has 'TimeoutStopSec=5s', should have 'TimeoutStopSec=12s'); fix: dqagent install")
    assert fails[2] == ("FAIL: dramatiq-worker@.service has TimeoutStopSec=5s in systemd but "
                        "GRACEFUL_SHUTDOWN_TIMEOUT=12: workers are SIGKILLed after the template's value; fix: "
                        "dqagent install (renders the template and reloads systemd)")
    # and the agent warns at start
    c.systemctl("restart", "dqagent")
    wait_until("config_warning at start", lambda: any(
        r.get("DQAGENT_EVENT") == "config_warning" and "TimeoutStopSec=5s" in r.get("MESSAGE", "")
        for r in journal(c)))
    dqagent(c, "install")
    assert _check(c)[0] == 0

    # When the Redis password is wrong
    c.write("/etc/dqagent/redis-password", "wrong\n", mode=0o600)
    code, lines = _check(c)
    assert code == 78 and _fails(lines) == [
        f"FAIL: Redis at redis://127.0.0.1:{pw.port}/0: authentication refused; fix: check REDIS_* in the "
        "settings file and the password in /etc/dqagent/redis-password"]
    # then install --now checks first and does not start the agent
    c.systemctl("stop", "dqagent")
    result = c.run([DQAGENT, "--env-file", "/etc/dqagent/dqagent.env", "install", "--now"], check=False)
    assert result.returncode == 78, result
    assert result.stderr.splitlines()[-1] == ("dqagent install: not starting dqagent.service: dqagent check "
                                              "failed")
    assert c.unit_property("dqagent.service", "ActiveState") == "inactive"

"""Each setting is declared once (dqagent/settings/declarations.py): the settings file `dqagent install` writes, the
README's settings table, docs/operations.md's reload table and reload's classification come from it, or
these tests fail. Keys of the settings file that no setting declares are reported, not ignored."""

from __future__ import annotations

import asyncio
import logging
import re
import subprocess
import sys
from dataclasses import MISSING, fields
from pathlib import Path

import pytest

from dqagent.agent import reload
from dqagent.agent.reload import Reloader
from dqagent.settings import sources
from dqagent.settings.config import Settings, parse_settings
from dqagent.settings.declarations import SETTINGS, OnReload, Setting, markdown_table, plain, unknown_key_message
from dqagent.setup import check
from dqagent.setup.layout import env_template
from tests.unit.fakes import FakeDemandProbe

ROOT = Path(__file__).parents[2]
#: Valid with every alternative below taken alone (MAX_QUEUE_AGE needs the target policy).
BASE = {"SCALING_POLICY": "target", "LOG_FILE": "", "REDIS_PASSWORD_FILE": "", "DRAMATIQ_COMMAND": "/bin/true"}
#: Another valid value for every setting that fills a `Settings` field: a new setting needs one here.
ALTERNATIVE = {
    "REDIS_HOST": "redis.example", "REDIS_PORT": "6380", "REDIS_DB": "3", "REDIS_PASSWORD": "pw-secret",
    "REDIS_URL": "redis://h:6379/0", "REDIS_TIMEOUT": "2",
    "RABBITMQ_URL": "amqp://dq@rabbit.example/v",
    "RABBITMQ_PASSWORD": "rabbit-secret", "RABBITMQ_PASSWORD_FILE": "/run/rabbit-pw",
    "RABBITMQ_MANAGEMENT_URL": "https://rabbit.example:15671", "RABBITMQ_TIMEOUT": "3",
    "DRAMATIQ_QUEUE_NAME": "q,r", "DRAMATIQ_NAMESPACE": "ns",
    "DRAMATIQ_COMMAND": "/bin/sleep infinity", "MIN_PROCESSES": "2", "MAX_PROCESSES": "9", "CHECK_INTERVAL": "30",
    "SCALE_UP_THRESHOLD_MULTIPLIER": "6", "SCALE_DOWN_THRESHOLD_MULTIPLIER": "2", "LOG_LEVEL": "DEBUG",
    "LOG_FILE": "other.log", "GRACEFUL_SHUTDOWN_TIMEOUT": "60", "PROCESS_STARTUP_DELAY": "3",
    "QUEUE_METRIC": "ready", "WORKER_USER": "app", "WORKER_DIRECTORY": "/srv/app", "ALLOW_ROOT_WORKERS": "yes",
    "DEMAND_POLL_INTERVAL": "3", "DBUS_TIMEOUT": "10", "METRICS_ADDRESS": "127.0.0.1:9810",
    "METRICS_TEXTFILE": "/var/lib/node/dq.prom", "FLEET": "f", "FLEET_WEIGHT": "3", "FLEET_HOST_ID": "h1",
    "SCALING_POLICY": "step", "TARGET_PER_WORKER": "12", "TARGET_TOLERANCE": "0.3", "SCALE_UP_MAX_STEP": "2",
    "SCALE_DOWN_WINDOW": "30", "MAX_QUEUE_AGE": "60", "WORKER_HUNG_AFTER": "300",
    "BROKER_FAILURE": "min", "BROKER_FAILURE_COUNT": "2", "BROKER_FAILURE_GRACE": "10",
    "PREDICTIVE": "shadow",
    "WORKER_MEMORY_MAX": "1G", "WORKER_MEMORY_HIGH": "512M",
    "POOL_MEMORY_MAX": "2G", "POOL_CPU_QUOTA": "300%", "POOL_TASKS_MAX": "50%", "GUARD": "off",
    "GUARD_MEMORY_PRESSURE": "20", "GUARD_CPU_PRESSURE": "60", "GUARD_MEMORY_RESERVE": "5%",
    "GUARD_PROC_DIR": "/tmp/proc", "POOL_PRIORITY": "10", "HOST_MAX_PROCESSES": "12", "PAUSE_GROUP": "ops",
    "SCHEDULE": "Mon-Fri 08:00-18:00 min=2", "SCHEDULE_TIMEZONE": "Europe/Berlin",
}
WITH_FIELD = [s for s in SETTINGS if s.field]


def test_every_settings_field_is_filled_by_exactly_one_declaration() -> None:
    assert sorted(s.field for s in WITH_FIELD) == sorted(f.name for f in fields(Settings))
    assert len({s.key for s in SETTINGS}) == len(SETTINGS)
    # The dataclass's own defaults (for tests that build Settings directly) are the declared ones
    parsed = parse_settings({})
    for f in fields(Settings):
        if f.default is not MISSING:
            assert getattr(parsed, f.name) == f.default, f.name


def _template_blocks(template: str) -> list[tuple[str, str, str]]:
    """(key, value, the comment above it) for every setting line of the settings file."""
    out: list[tuple[str, str, str]] = []
    comment: list[str] = []
    for line in template.splitlines()[3:]:
        inline = re.fullmatch(r"# ([A-Z_]+)=  # (.*)", line)  # a setting shown commented out
        if inline:
            out.append((inline[1], "", inline[2]))
        elif line.startswith("# "):
            comment.append(line[2:])
            continue
        else:
            key, _, value = line.partition("=")
            out.append((key, value.strip('"'), " ".join(comment)))
        comment = []
    return out


def test_the_settings_file_install_writes_is_the_declarations(tmp_path: Path) -> None:
    blocks = _template_blocks(env_template())
    assert [key for key, _, _ in blocks] == [s.key for s in SETTINGS]
    for (key, value, comment), s in zip(blocks, SETTINGS, strict=True):
        assert comment.startswith(plain(s.description)), key
        assert ("needs dqagent install" in comment) == (s.on_reload is OnReload.INSTALL), key
        assert value == ("" if key == "REDIS_PASSWORD" else s.default), key
    # and it loads as the defaults, nothing unknown
    env = tmp_path / "dqagent.env"
    env.write_text(env_template())
    assert sources.read_env_file(env) == {s.key: s.default for s in SETTINGS if s.key != "REDIS_PASSWORD"}
    assert sources.load(env, environ={}).unknown_keys == ()


def test_the_readme_settings_table_is_the_declarations() -> None:
    readme = (ROOT / "README.md").read_text()
    assert markdown_table() in readme, "README.md's settings table differs: run .venv/bin/python " \
                                       "dev/settings_table.py --write"
    for s in SETTINGS:
        assert f"| `{s.key}` | " in markdown_table() and s.on_reload.value in markdown_table()


def _reload_table_rows() -> list[tuple[set[str], str]]:
    """(declared keys named in the first column, the second column) of docs/operations.md's reload table."""
    text = (ROOT / "docs" / "operations.md").read_text()
    table = text[text.index("| settings | on reload |"):].split("\n\n")[0].splitlines()[2:]
    declared = {s.key for s in SETTINGS}
    rows = []
    for row in table:
        first, second = row.strip("|").split(" | ", 1)
        rows.append((set(re.findall(r"`([A-Z][A-Z0-9_]+)`", first)) & declared, second))
    return rows


def test_the_operations_reload_table_agrees_with_the_declarations() -> None:
    rows = _reload_table_rows()
    install = {s.key for s in SETTINGS if s.on_reload is OnReload.INSTALL}
    # REDIS_PASSWORD has its own row, on the password file
    redis = {s.key for s in SETTINGS if s.on_reload is OnReload.REDIS} - {"REDIS_PASSWORD"}
    (install_row,) = [keys for keys, says in rows if says.startswith("not applied")]
    (redis_row,) = [keys for keys, says in rows if keys and says.startswith("applied: a new Redis connection")]
    assert install_row == install
    assert redis_row == redis
    for keys, says in rows:
        if says.startswith("applied: a new RabbitMQ connection"):
            assert keys == {s.key for s in SETTINGS if s.on_reload is OnReload.RABBITMQ} - {"RABBITMQ_PASSWORD"}
        elif keys not in (install_row, redis_row):
            assert not keys & (install | redis), (keys, says)


@pytest.mark.parametrize("setting", WITH_FIELD, ids=lambda s: s.key)
def test_reload_classifies_each_setting_as_declared(setting: Setting) -> None:
    old = parse_settings(BASE)
    new = parse_settings({**BASE, setting.key: ALTERNATIVE[setting.key]})
    applied, needs_install = reload.plan_reload(old, new)
    assert (applied, needs_install) == (((), (setting.key,)) if setting.on_reload is OnReload.INSTALL
                                        else ((setting.key,), ()))
    effective = reload.effective_settings(old, new)
    kept = setting.on_reload is OnReload.INSTALL
    assert getattr(effective, setting.field) == getattr(old if kept else new, setting.field)
    assert (setting.field in reload.PROBE_FIELDS) == (setting.on_reload in (OnReload.REDIS, OnReload.RABBITMQ))
    assert setting.key in reload.describe_changes(old, new)


@pytest.mark.parametrize("key", ["REDIS_HOST", "DRAMATIQ_NAMESPACE", "REDIS_TIMEOUT", "MAX_PROCESSES", "FLEET",
                                 "RABBITMQ_URL", "RABBITMQ_TIMEOUT"])
def test_the_reloader_makes_a_new_redis_connection_exactly_for_redis_settings(tmp_path: Path, key: str) -> None:
    env = tmp_path / "dqagent.env"
    env.write_text("".join(f"{k}={v}\n" for k, v in BASE.items()))
    old = sources.load(env, environ={}).settings
    env.write_text("".join(f"{k}={v}\n" for k, v in {**BASE, key: ALTERNATIVE[key]}.items()))
    first = FakeDemandProbe()
    reloader = Reloader(lambda: sources.load(env, environ={}), lambda s, pools=(): FakeDemandProbe(), None)
    outcome = asyncio.run(reloader.reload(old, first))
    assert outcome.ok
    assert (outcome.probe is not first) == (key in ("REDIS_HOST", "DRAMATIQ_NAMESPACE", "REDIS_TIMEOUT",
                                                     "RABBITMQ_URL", "RABBITMQ_TIMEOUT"))


@pytest.mark.parametrize("key", ["REDIS_PASSWORD", "RABBITMQ_PASSWORD"])
def test_a_changed_password_is_named_on_reload_never_shown(key: str) -> None:
    old = parse_settings(BASE)
    new = parse_settings({**BASE, key: ALTERNATIVE[key]})
    changes = reload.describe_changes(old, new)
    assert key in changes and ALTERNATIVE[key] not in changes


# -- keys no setting declares ---------------------------------------------------------------------

def test_an_unknown_key_is_named_with_the_nearest_setting() -> None:
    assert unknown_key_message("MAX_PROCESS") == "MAX_PROCESS: unknown setting; did you mean MAX_PROCESSES?"
    assert unknown_key_message("DRAMATIQ_COMAND") == "DRAMATIQ_COMAND: unknown setting; did you mean DRAMATIQ_COMMAND?"
    assert unknown_key_message("max_processes").endswith("did you mean MAX_PROCESSES?")
    assert unknown_key_message("COLOUR") == ("COLOUR: unknown setting; no setting has a similar name (the README "
                                             "lists them all)")


def _typo_file(tmp_path: Path) -> Path:
    env = tmp_path / "dqagent.env"
    env.write_text("MAX_PROCESS=8\nMIN_PROCESSES=1\nDRAMATIQ_COMAND=/bin/false\nMAX_PROCESS=9\n"
                   f"DRAMATIQ_COMMAND=/bin/true\nWORKER_DIRECTORY={tmp_path}\nLOG_FILE=\n")
    return env


def test_the_settings_file_s_unknown_keys_are_listed_but_not_the_environment_s(tmp_path: Path) -> None:
    env = _typo_file(tmp_path)
    loaded = sources.load(env, environ={"PATH": "/bin", "MAX_PROCES": "2", "MAX_PROCESSES": "4"})
    assert loaded.unknown_keys == ("MAX_PROCESS", "DRAMATIQ_COMAND")
    assert loaded.settings.max_processes == 4 and loaded.settings.dramatiq_command == "/bin/true"


def test_check_fails_each_unknown_key_with_the_nearest_name(tmp_path: Path) -> None:
    env = _typo_file(tmp_path)
    lines = [r.line() for r in asyncio.run(check.run_checks(env, offline=True))]
    assert lines[:2] == [
        f"FAIL: MAX_PROCESS: unknown setting; did you mean MAX_PROCESSES? (a key of {env} that dqagent ignores; "
        "fix: correct or remove it)",
        f"FAIL: DRAMATIQ_COMAND: unknown setting; did you mean DRAMATIQ_COMMAND? (a key of {env} that dqagent "
        "ignores; fix: correct or remove it)"]
    assert not any("load and are valid" in line for line in lines)
    env.write_text(f"DRAMATIQ_COMMAND=/bin/true\nWORKER_DIRECTORY={tmp_path}\n")
    assert asyncio.run(check.run_checks(env, offline=True))[0].line() == f"ok: settings ({env}) load and are valid"


def test_worker_exec_does_not_fail_on_unknown_keys(tmp_path: Path) -> None:
    env = _typo_file(tmp_path)
    result = subprocess.run([sys.executable, "-m", "dqagent", "--env-file", str(env), "worker-exec"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stderr == "", result


def test_the_agent_warns_once_per_unknown_key_at_each_reload(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    env = _typo_file(tmp_path)
    old = sources.load(env, environ={}).settings
    reloader = Reloader(lambda: sources.load(env, environ={}), lambda s, pools=(): FakeDemandProbe(), None)
    caplog.set_level(logging.INFO)
    for reloads in (1, 2):
        assert asyncio.run(reloader.reload(old, FakeDemandProbe())).ok
        warned = [r for r in caplog.records if getattr(r, "DQAGENT_EVENT", "") == "unknown_setting"]
        assert [r.KEY for r in warned] == ["MAX_PROCESS", "DRAMATIQ_COMAND"] * reloads  # type: ignore[attr-defined]
    assert warned[0].levelno == logging.WARNING
    assert warned[0].getMessage() == (f"MAX_PROCESS: unknown setting; did you mean MAX_PROCESSES? (in {env}; the "
                                      "agent ignores it)")


@pytest.mark.parametrize(("threads", "fresh"), [(5, False), (8, True)])
def test_on_rabbitmq_a_reload_changing_the_threads_makes_a_new_probe(tmp_path: Path, threads: int,
                                                                     fresh: bool) -> None:
    """The estimate without the management API uses 2 x the pool's threads: a new count needs a new probe."""
    env = tmp_path / "dqagent.env"
    base = {**BASE, "RABBITMQ_URL": "amqp://dq@mq/v", "DRAMATIQ_COMMAND": "'python -m dramatiq -p 1 -t 5 app'"}
    env.write_text("".join(f"{k}={v}\n" for k, v in base.items()))
    loaded = sources.load(env, environ={})
    env.write_text("".join(f"{k}={v}\n" for k, v in {
        **base, "DRAMATIQ_COMMAND": f"'python -m dramatiq -p 1 -t {threads} app'"}.items()))
    first = FakeDemandProbe()
    reloader = Reloader(lambda: sources.load(env, environ={}), lambda s, pools=(): FakeDemandProbe(), None)
    outcome = asyncio.run(reloader.reload(loaded.settings, first, loaded.pools))
    assert outcome.ok and (outcome.probe is not first) == fresh

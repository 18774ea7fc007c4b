from __future__ import annotations

from pathlib import Path
from urllib.parse import quote

import pytest
from hypothesis import given
from hypothesis import strategies as st
from redis.connection import parse_url

from dqagent.errors import ConfigError
from dqagent.settings import sources
from dqagent.settings.config import DEFAULTS, QueueMetric, parse_settings, redact_url

FIXTURE = Path(__file__).parent.parent / "fixtures" / "old-manager.env"


def test_defaults_are_the_old_managers() -> None:
    s = parse_settings({})
    assert (s.redis_host, s.redis_port, s.redis_db, s.redis_password) == ("localhost", 6379, 0, "")
    assert s.queue_names == ("nietest_subtask",)
    assert s.dramatiq_command == (
        "python -m dramatiq --processes 1 --threads 5 --verbose backend.dramatiq_app.workers.subtask")
    assert (s.min_processes, s.max_processes, s.check_interval_s) == (1, 10, 180)
    assert (s.scale_up_multiplier, s.scale_down_multiplier) == (5, 2.5)
    assert (s.log_level, s.log_file) == ("INFO", "process_manager.log")
    assert (s.graceful_shutdown_timeout_s, s.process_startup_delay_s) == (30, 5)
    assert s.queue_metric is QueueMetric.OUTSTANDING


def test_old_manager_env_file_loads_as_written() -> None:
    loaded = sources.load(FIXTURE, environ={}, cwd=FIXTURE.parent)
    assert loaded.settings == parse_settings({})  # the documented file spells out the defaults
    assert loaded.settings.check_interval_s == 180  # despite "  # 检查间隔（秒）"


def test_precedence_flags_over_environment_over_file(tmp_path: Path) -> None:
    env = tmp_path / ".env"
    env.write_text("MIN_PROCESSES=2\nMAX_PROCESSES=7\nCHECK_INTERVAL=9\n")
    loaded = sources.load(None, environ={"MAX_PROCESSES": "8", "CHECK_INTERVAL": "4"},
                          flags={"CHECK_INTERVAL": "3"}, cwd=tmp_path, command="start")
    s = loaded.settings
    assert (s.min_processes, s.max_processes, s.check_interval_s) == (2, 8, 3)
    assert loaded.env_file == env


def test_missing_env_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--env-file"):
        sources.load(tmp_path / "nope.env", environ={})


def test_password_never_in_repr_or_public_items() -> None:
    s = parse_settings({"REDIS_PASSWORD": "s3cr3t-pw", "REDIS_URL": "redis://:url-pw@h:1/0"})
    assert "s3cr3t" not in repr(s) and "url-pw" not in repr(s)
    text = str(s.public_items())
    assert "s3cr3t" not in text and "url-pw" not in text and "(set)" in text
    assert "url-pw" not in s.redis_location()


@pytest.mark.parametrize(("url", "shown"), [
    ("redis://h:6379/0", "redis://h:6379/0"),
    ("redis://:pw@h:6379/0", "redis://:***@h:6379/0"),
    ("redis://u:pw@h/0?password=qs-pw&db=1", "redis://u:***@h/0?password=***&db=1"),
    ("redis://h/0?%70assword=qs-pw&socket_timeout=1", "redis://h/0?%70assword=***&socket_timeout=1"),
    ("redis://bare-pw@[::1]:6379/0", "redis://***@[::1]:6379/0"),  # a lone userinfo may be a password
    ("unix:///run/redis.sock?password=qs-pw&db=2", "unix:///run/redis.sock?password=***&db=2"),
    ("redis://:p@ss@h:notaport/0", "redis://:***@h:notaport/0"),  # an unquoted @, a bad port: no exception
])
def test_redact_url_hides_every_password_redis_py_would_use(url: str, shown: str) -> None:
    assert redact_url(url) == shown


_PASSWORD = st.text(st.characters(min_codepoint=33, max_codepoint=0x2FF), min_size=1).map(lambda p: "Zq" + p)


@given(_PASSWORD, st.sampled_from([
    "redis://:{q}@h:6379/0", "redis://u:{q}@h/0?db=1", "redis://h/0?password={q}&db=1",
    "rediss://u@h/0?password={q}", "unix:///run/r.sock?db=2&password={q}", "redis://h/0?%70assword={q}",
]))
def test_redacted_url_never_carries_the_password_redis_py_reads(password: str, form: str) -> None:
    # Given a URL redis-py reads `password` from (as REDIS_URL would be written, quoted)
    url = form.format(q=quote(password, safe=""))
    assert parse_url(url)["password"] == password
    # Then the redacted form, as logged and printed, holds no spelling of it, and redis-py would read none
    shown = redact_url(url)
    assert password not in shown and quote(password, safe="") not in shown
    assert parse_url(shown).get("password") in (None, "***")
    assert parse_settings({"REDIS_URL": url}).redis_location() == shown


def test_empty_credential_means_no_password_silently(tmp_path: Path) -> None:
    (tmp_path / "redis_password").write_text("")
    # A password file that cannot be read, even by root (a directory), as user dqagent sees
    # /etc/dqagent/redis-password (root's, 0600): with the credential it is never read.
    unreadable = str(tmp_path)
    loaded = sources.load(None, environ={"CREDENTIALS_DIRECTORY": str(tmp_path),
                                        "REDIS_PASSWORD_FILE": unreadable}, cwd=tmp_path)
    assert (loaded.settings.redis_password, loaded.password_note) == ("", "")
    without_credential = sources.load(None, environ={"REDIS_PASSWORD_FILE": unreadable}, cwd=tmp_path)
    assert without_credential.password_note.startswith("password file")  # status still says why


def test_root_workers_need_the_explicit_opt_in() -> None:
    assert parse_settings({"WORKER_USER": "root", "ALLOW_ROOT_WORKERS": "yes"}).allow_root_workers
    assert not parse_settings({}).allow_root_workers


def test_empty_credential_does_not_hide_redis_password(tmp_path: Path) -> None:
    (tmp_path / "redis_password").write_text("")
    loaded = sources.load(None, environ={"CREDENTIALS_DIRECTORY": str(tmp_path), "REDIS_PASSWORD": "pw"},
                          cwd=tmp_path)
    assert loaded.settings.redis_password == "pw"


def test_password_from_credentials_directory(tmp_path: Path) -> None:
    (tmp_path / "redis_password").write_text("from-cred\n")
    loaded = sources.load(None, environ={"CREDENTIALS_DIRECTORY": str(tmp_path)}, cwd=tmp_path)
    assert loaded.settings.redis_password == "from-cred"


def test_unreadable_password_file_is_reported_not_fatal(tmp_path: Path) -> None:
    loaded = sources.load(None, environ={"REDIS_PASSWORD_FILE": str(tmp_path)}, cwd=tmp_path)
    assert loaded.settings.redis_password == ""
    assert "unavailable" in loaded.password_note


def test_comma_separated_queues() -> None:
    assert parse_settings({"DRAMATIQ_QUEUE_NAME": "a, b.c,_d-e"}).queue_names == ("a", "b.c", "_d-e")


INVALID = [
    ("REDIS_PORT", "abc", "integer"),
    ("REDIS_PORT", "0", "1..65535"),
    ("REDIS_PORT", "65536", "1..65535"),
    ("REDIS_DB", "-1", ">= 0"),
    ("REDIS_DB", "x", "integer"),
    ("MIN_PROCESSES", "-1", "0..1000"),
    ("MIN_PROCESSES", "1.5", "integer"),
    ("MAX_PROCESSES", "1001", "..1000"),
    ("MAX_PROCESSES", "zz", "integer"),
    ("CHECK_INTERVAL", "0", "> 0"),
    ("CHECK_INTERVAL", "-5", "> 0"),
    ("CHECK_INTERVAL", "soon", "number"),
    ("SCALE_UP_THRESHOLD_MULTIPLIER", "0", "> 0"),
    ("SCALE_UP_THRESHOLD_MULTIPLIER", "nan", "> 0"),
    ("SCALE_DOWN_THRESHOLD_MULTIPLIER", "-1", "> 0"),
    ("SCALE_DOWN_THRESHOLD_MULTIPLIER", "5", "flap"),
    ("SCALE_DOWN_THRESHOLD_MULTIPLIER", "6", "flap"),
    ("LOG_LEVEL", "LOUD", "DEBUG"),
    ("GRACEFUL_SHUTDOWN_TIMEOUT", "-1", "> 0"),
    ("GRACEFUL_SHUTDOWN_TIMEOUT", "0", "> 0"),
    ("DRAMATIQ_COMMAND", "python -m dramatiq 'app", "No closing quotation"),
    ("PROCESS_STARTUP_DELAY", "-0.5", ">= 0"),
    ("DRAMATIQ_QUEUE_NAME", "", "queue name"),
    ("DRAMATIQ_QUEUE_NAME", "bad queue", "queue name"),
    ("DRAMATIQ_QUEUE_NAME", "9lives", "queue name"),
    ("DRAMATIQ_QUEUE_NAME", "a,,b", "queue name"),
    ("DRAMATIQ_QUEUE_NAME", "x*", "queue name"),
    ("DRAMATIQ_COMMAND", "   ", "non-empty"),
    ("QUEUE_METRIC", "llen", "outstanding or ready"),
    ("REDIS_URL", "http://x", "redis://"),
    ("WORKER_DIRECTORY", "relative/dir", "absolute"),
    ("WORKER_USER", "root", "ALLOW_ROOT_WORKERS=yes"),
    ("ALLOW_ROOT_WORKERS", "maybe", "yes or no"),
    ("DEMAND_POLL_INTERVAL", "0", "> 0"),
    ("DBUS_TIMEOUT", "0", "(0, 600]"),
    ("DBUS_TIMEOUT", "601", "(0, 600]"),
    ("DBUS_TIMEOUT", "never", "number"),
    # the scaling-policy block
    ("SCALING_POLICY", "hpa", "step, target"),
    ("SCALING_POLICY", "", "step, target"),
    ("TARGET_PER_WORKER", "0", "> 0"),
    ("TARGET_PER_WORKER", "-3", "> 0"),
    ("TARGET_PER_WORKER", "five", "number"),
    ("TARGET_PER_WORKER", "inf", "> 0"),
    ("TARGET_TOLERANCE", "-0.1", "[0, 1)"),
    ("TARGET_TOLERANCE", "1", "[0, 1)"),
    ("TARGET_TOLERANCE", "nan", "[0, 1)"),
    ("SCALE_UP_MAX_STEP", "0", "1..1000"),
    ("SCALE_UP_MAX_STEP", "1001", "1..1000"),
    ("SCALE_UP_MAX_STEP", "2.5", "1..1000"),
    ("SCALE_DOWN_WINDOW", "-1", "0..86400"),
    ("SCALE_DOWN_WINDOW", "86401", "0..86400"),
    ("SCALE_DOWN_WINDOW", "later", "number"),
]


@pytest.mark.parametrize(("key", "value", "hint"), INVALID)
def test_each_invalid_setting_is_one_line_naming_key_value_and_range(key: str, value: str, hint: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_settings({key: value})
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"invalid {key}=")
    assert hint in message
    assert info.value.key == key


def test_max_below_min_is_rejected() -> None:
    with pytest.raises(ConfigError, match=r"invalid MAX_PROCESSES='2'.*>= MIN_PROCESSES=3"):
        parse_settings({"MIN_PROCESSES": "3", "MAX_PROCESSES": "2"})


def test_unknown_keys_are_ignored_and_every_default_parses() -> None:
    assert parse_settings({"SOMETHING_ELSE": "x"}) == parse_settings(dict(DEFAULTS))



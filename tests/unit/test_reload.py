"""`systemctl reload dqagent`: the pure plan, the answer protocol, and the agent's reload with fakes.

The real signal, answer file, sandbox and systemd side are in tests/integration/test_reload.py.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import signal
from dataclasses import fields
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dqagent.agent import reload
from dqagent.agent.lifecycle import Agent
from dqagent.agent.reload import Answer, Reloader, ReloadError, plan_reload
from dqagent.core.policies import make_policy
from dqagent.errors import ConfigError
from dqagent.settings import sources
from dqagent.settings.config import DEFAULTS, Settings, parse_settings, parse_worker_command
from dqagent.settings.workercmd import worker_shape
from tests.unit.fakes import FakeDemandProbe, FakeUnits, RecordingNotifier
from tests.unit.logged import events

BASE = {"GUARD": "off", "MIN_PROCESSES": "1", "MAX_PROCESSES": "5", "CHECK_INTERVAL": "1", "PROCESS_STARTUP_DELAY": "0",
        "GRACEFUL_SHUTDOWN_TIMEOUT": "1", "LOG_FILE": "", "DRAMATIQ_QUEUE_NAME": "q", "REDIS_PASSWORD_FILE": ""}

# Valid alternative values per setting (each alone keeps the whole file valid against BASE).
ALTERNATIVES: dict[str, list[str]] = {
    "REDIS_HOST": ["localhost", "redis.example"], "REDIS_PORT": ["6379", "6380"], "REDIS_DB": ["0", "3"],
    "REDIS_PASSWORD": ["", "pw-secret"], "REDIS_TIMEOUT": ["5", "2"],
    "DRAMATIQ_QUEUE_NAME": ["q", "q,r"], "DRAMATIQ_NAMESPACE": ["dramatiq", "ns"],
    "DRAMATIQ_COMMAND": ["/bin/sleep infinity", "/bin/true"], "MIN_PROCESSES": ["1", "0", "2"],
    "MAX_PROCESSES": ["5", "2", "9"], "CHECK_INTERVAL": ["1", "30"], "LOG_LEVEL": ["INFO", "DEBUG"],
    "GRACEFUL_SHUTDOWN_TIMEOUT": ["1", "60"], "PROCESS_STARTUP_DELAY": ["0", "3"],
    "QUEUE_METRIC": ["outstanding", "ready"], "WORKER_USER": ["dqworker", "app"],
    "WORKER_DIRECTORY": ["/var/lib/dqagent/worker", "/srv/app"], "SCALING_POLICY": ["step", "target"],
    "SCALE_DOWN_WINDOW": ["120", "30"],
}
choices = st.fixed_dictionaries({k: st.sampled_from(v) for k, v in ALTERNATIVES.items()})


def settings(**values: str) -> Settings:
    return parse_settings({**BASE, **values})


def test_every_settings_field_maps_to_a_setting_key() -> None:
    keys = [reload.setting_key(f.name) for f in fields(Settings)]
    assert set(keys) <= set(DEFAULTS) and len(set(keys)) == len(keys)
    assert {reload.setting_key(f) for f in reload.NEEDS_INSTALL_FIELDS} == {
        "WORKER_USER", "WORKER_DIRECTORY", "GRACEFUL_SHUTDOWN_TIMEOUT", "METRICS_TEXTFILE",
        "WORKER_MEMORY_MAX", "WORKER_MEMORY_HIGH", "POOL_MEMORY_MAX", "POOL_CPU_QUOTA", "POOL_TASKS_MAX", "PAUSE_GROUP"}


@given(choices, choices)
def test_plan_splits_exactly_the_changed_keys(a: dict[str, str], b: dict[str, str]) -> None:
    old, new = settings(**a), settings(**b)
    applied, needs_install = plan_reload(old, new)
    changed = {k for k in ALTERNATIVES if a[k] != b[k]}
    assert set(applied) | set(needs_install) == changed
    assert not set(applied) & set(needs_install)
    assert set(needs_install) <= {"WORKER_USER", "WORKER_DIRECTORY", "GRACEFUL_SHUTDOWN_TIMEOUT"}
    # What the agent runs with afterwards: every applied key from `new`, the rest still `old`'s
    effective = reload.effective_settings(old, new)
    assert plan_reload(effective, new) == ((), needs_install)
    assert plan_reload(old, effective) == (applied, ())
    assert plan_reload(new, new) == ((), ())


def test_change_description_never_shows_secrets() -> None:
    old = settings(REDIS_PASSWORD="old-secret", REDIS_URL="redis://:url-secret@h:1/0")
    new = settings(REDIS_PASSWORD="new-secret", REDIS_URL="redis://:url-secret2@h:2/0", MAX_PROCESSES="2")
    text = reload.describe_changes(old, new)
    assert "secret" not in text
    assert "REDIS_PASSWORD (changed)" in text and "MAX_PROCESSES 5 -> 2" in text
    assert "REDIS_URL redis://:***@h:1/0 -> redis://:***@h:2/0" in text


def test_answer_round_trip_and_garbage() -> None:
    a = Answer(pid=12, generation=3, began_ns=99, ok=False, message="invalid MAX_PROCESSES='x'")
    assert Answer.from_json(a.to_json()) == a
    for text in ("", "{", "[]", '{"pid": 1}', '{"pid": "x", "generation": 1, "began_ns": 1, "ok": 1, "message": ""}'):
        assert Answer.from_json(text) is None


class FakeClock:
    def __init__(self) -> None:
        self.ns = 1_000_000_000

    def __call__(self) -> int:
        return self.ns

    def sleep(self, seconds: float) -> None:
        self.ns += int(seconds * 1e9)


def test_client_waits_for_an_answer_that_began_after_its_signal(tmp_path: Path) -> None:
    clock, signals = FakeClock(), []
    # A stale answer from an earlier reload is on disk; the agent answers ours after two polls.
    (tmp_path / reload.ANSWER_NAME).write_text(Answer(42, 1, clock.ns - 5, True, "old").to_json())
    polls = 0

    def sleep(s: float) -> None:
        nonlocal polls
        polls += 1
        clock.sleep(s)
        if polls == 2:
            (tmp_path / reload.ANSWER_NAME).write_text(Answer(42, 2, clock.ns, True, "new").to_json())

    answer = reload.request_reload(42, tmp_path, 5, kill=lambda pid, sig: signals.append((pid, sig)),
                                   monotonic_ns=clock, sleep=sleep)
    assert answer.message == "new" and answer.generation == 2
    assert signals[0] == (42, signal.SIGHUP) and all(s == (42, 0) for s in signals[1:])


def test_client_times_out_and_notices_a_dead_agent(tmp_path: Path) -> None:
    clock = FakeClock()
    with pytest.raises(ReloadError, match=r"no answer .* within 1s"):
        reload.request_reload(42, tmp_path, 1, kill=lambda pid, sig: None, monotonic_ns=clock, sleep=clock.sleep)

    def gone(pid: int, sig: int) -> None:
        if sig == 0:
            raise ProcessLookupError

    with pytest.raises(ReloadError, match="exited before answering"):
        reload.request_reload(42, tmp_path, 1, kill=gone, monotonic_ns=clock, sleep=clock.sleep)

    def missing(pid: int, sig: int) -> None:
        raise ProcessLookupError

    with pytest.raises(ReloadError, match="no process 42"):
        reload.request_reload(42, tmp_path, 1, kill=missing, monotonic_ns=clock, sleep=clock.sleep)
    with pytest.raises(ReloadError, match="no agent PID"):
        reload.request_reload(0, tmp_path, 1, kill=missing, monotonic_ns=clock, sleep=clock.sleep)


# -- the agent's side, with fakes -----------------------------------------------------------------

class Setup:
    """An agent started from `env` (a settings file), with fakes for systemd and Redis."""

    def __init__(self, tmp_path: Path, running: list[int], **values: str) -> None:
        self.env = tmp_path / "dqagent.env"
        self.answers = tmp_path / "run"
        self.answers.mkdir()
        self.write(**values)
        loaded = sources.load(self.env, environ={})
        self.probes: list[FakeDemandProbe] = []
        self.first = self.make_probe(loaded.settings)
        self.units = FakeUnits(running=running)
        self.notifier = RecordingNotifier()
        read = functools.partial(sources.load, self.env, environ={})
        self.agent = Agent(loaded.settings, self.units, self.first, self.notifier,
                           make_policy(loaded.settings, loaded.settings.scaling_policy,
                                      shape=worker_shape(loaded.settings.dramatiq_command, 4)),
                           reloader=Reloader(read, self.make_probe, self.answers, pid=4242),
                           under_systemd=False)

    def write(self, **values: str) -> None:
        self.env.write_text("".join(f"{k}={v}\n" for k, v in {**BASE, **values}.items()))

    def make_probe(self, s: Settings, pools: object = ()) -> FakeDemandProbe:
        probe = FakeDemandProbe()
        for q in s.queue_names:
            probe.set_queue(q, ready=0)
        self.probes.append(probe)
        return probe

    def answer(self) -> Answer | None:
        return reload.read_answer(self.answers)

    def reload(self) -> None:
        """What SIGHUP (`systemctl reload dqagent`) makes the loop do between two ticks.

        The agent has no public entry point for it outside `run()`; this is the one place that calls
        its private step, so the tests below do not each depend on its name.
        """
        asyncio.run(self.agent.apply_reload())


def test_reload_lowers_max_and_the_next_tick_scales_down(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    t = Setup(tmp_path, running=[1, 2, 3, 4], MAX_PROCESSES="5")
    t.write(MAX_PROCESSES="2")
    t.reload()
    assert t.agent.s.max_processes == 2 and t.agent.policy.max_processes == 2  # type: ignore[attr-defined]
    assert t.notifier.sent == ["RELOADING=1", "READY=1"]
    assert t.agent.probe is t.first and not t.first.closed  # Redis unchanged: same connection
    (done,) = events(caplog, "reloaded")
    assert done.CHANGED == "MAX_PROCESSES" and "MAX_PROCESSES 5 -> 2" in done.getMessage()  # type: ignore[attr-defined]
    answer = t.answer()
    assert answer is not None and answer.ok and answer.pid == 4242 and answer.generation == 1
    asyncio.run(t.agent.tick())
    stopped = [u for kind, units in t.units.calls if kind == "stop" for u in units]
    assert stopped == ["dramatiq-worker@4.service", "dramatiq-worker@3.service"]


def test_invalid_file_keeps_the_old_settings_and_says_which_key(tmp_path: Path,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    t = Setup(tmp_path, running=[1, 2], MAX_PROCESSES="5")
    before = (t.agent.s, t.agent.policy, t.agent.probe)
    t.write(MAX_PROCESSES="lots", MIN_PROCESSES="0")
    t.reload()
    assert (t.agent.s, t.agent.policy, t.agent.probe) == before and not t.first.closed
    assert t.notifier.sent == ["RELOADING=1", "READY=1"]  # READY also after a failed reload
    (failed,) = events(caplog, "reload_failed")
    assert failed.levelno == logging.ERROR and failed.KEY == "MAX_PROCESSES"  # type: ignore[attr-defined]
    assert not events(caplog, "reloaded")
    answer = t.answer()
    assert answer is not None and not answer.ok and "MAX_PROCESSES" in answer.message
    # A removed file fails the same way, naming --env-file
    t.env.unlink()
    t.reload()
    assert events(caplog, "reload_failed")[-1].KEY == "--env-file"  # type: ignore[attr-defined]
    assert t.agent.s == before[0]


def test_install_only_keys_are_reported_once_and_the_rest_applied(tmp_path: Path,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    t = Setup(tmp_path, running=[1])
    t.write(WORKER_USER="app", GRACEFUL_SHUTDOWN_TIMEOUT="90", CHECK_INTERVAL="7")
    t.reload()
    (warning,) = events(caplog, "reload_needs_install")
    assert warning.levelno == logging.WARNING
    assert warning.KEYS == "GRACEFUL_SHUTDOWN_TIMEOUT,WORKER_USER"  # type: ignore[attr-defined]
    s = t.agent.s
    assert (s.check_interval_s, s.worker_user, s.graceful_shutdown_timeout_s) == (7, "dqworker", 1)


def test_redis_or_queue_change_swaps_the_probe_and_closes_the_old(tmp_path: Path,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    t = Setup(tmp_path, running=[1])
    t.write(DRAMATIQ_QUEUE_NAME="q,r", REDIS_PASSWORD="pw-secret-x")
    t.reload()
    assert t.first.closed and t.agent.probe is t.probes[-1] and t.agent.probe is not t.first
    assert t.agent.s.queue_names == ("q", "r")
    assert "pw-secret-x" not in caplog.text
    asyncio.run(t.agent.tick())  # the loop reads the new probe
    assert t.probes[-1].fetch_calls == 1 and t.first.fetch_calls == 0


def test_policy_change_starts_the_new_policy_from_its_initial_state(tmp_path: Path) -> None:
    t = Setup(tmp_path, running=[1])
    asyncio.run(t.agent.tick())
    t.write(SCALING_POLICY="target")
    t.reload()
    assert t.agent.policy.name == "target"
    assert t.agent.memory.policy_state == t.agent.policy.initial_state()
    asyncio.run(t.agent.tick())  # decides with the target policy's state, no type confusion


async def sent(notifier: RecordingNotifier, note: str) -> None:
    """Returns once the agent has sent `note` (poll it under `asyncio.wait_for`)."""
    while note not in notifier.sent:
        await asyncio.sleep(0.001)


def test_sighup_is_handled_between_ticks_and_the_agent_keeps_running(tmp_path: Path) -> None:
    t = Setup(tmp_path, running=[1, 2, 3], MAX_PROCESSES="5", CHECK_INTERVAL="3600")
    t.first.set_queue("q", ready=10)  # 3 workers hold: 7.5 <= 10 <= 15

    async def run() -> Answer | None:
        task = asyncio.create_task(t.agent.run())
        await asyncio.wait_for(sent(t.notifier, "READY=1"), 5)  # then the SIGHUP handler is in place
        t.write(MAX_PROCESSES="1")
        os.kill(os.getpid(), signal.SIGHUP)  # wakes the pause: reload, then a tick at once
        for _ in range(100):
            if t.answer() is not None and len(t.units.units) == 1:
                break
            await asyncio.sleep(0.02)
        t.agent.stop_requested.set()
        assert await task == 0
        return t.answer()

    answer = asyncio.run(run())
    assert answer is not None and answer.ok
    notes = [n for n in t.notifier.sent if not n.startswith("STATUS=")]
    assert notes[:3] == ["READY=1", "RELOADING=1", "READY=1"]
    # The tick right after the reload stopped two (the last call is the terminal shutdown's)
    stops = [u for kind, units in t.units.calls[:2] if kind == "stop" for u in units]
    assert stops == ["dramatiq-worker@3.service", "dramatiq-worker@2.service"]


def test_reloader_rereads_the_start_file_not_the_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # `start` by hand from a directory with ./.env: a reload reads that same file, even after a chdir
    (tmp_path / ".env").write_text("MAX_PROCESSES=3\n")
    loaded = sources.load(None, environ={}, cwd=tmp_path, command="start", system_file=tmp_path / "none")
    assert loaded.env_file == tmp_path / ".env"
    other = tmp_path / "elsewhere"
    other.mkdir()
    monkeypatch.chdir(other)
    (tmp_path / ".env").write_text("MAX_PROCESSES=2\n")
    again = sources.load(loaded.env_file, environ={}, command="start")
    assert again.settings.max_processes == 2


def test_config_error_of_read_is_the_only_failure_path(tmp_path: Path) -> None:
    def broken() -> sources.Loaded:
        raise ConfigError("REDIS_PORT", "0", "expected an integer in 1..65535")

    s = settings()
    r = Reloader(broken, lambda s, pools=(): FakeDemandProbe(), None)
    probe = FakeDemandProbe()
    outcome = asyncio.run(r.reload(s, probe))
    assert not outcome.ok and outcome.settings is s and outcome.probe is probe and outcome.policy is None
    r.answer(outcome)  # no answer directory outside systemd: nothing written, nothing raised
    assert r.generation == 1


def test_an_unforeseen_error_fails_the_reload_and_keeps_the_agent(caplog: pytest.LogCaptureFixture) -> None:
    # An exception no check foresaw (here from the read, as a bug would) used to leave the agent's loop and exit it
    def buggy() -> sources.Loaded:
        raise RuntimeError("a bug")

    s, probe = settings(), FakeDemandProbe()
    r = Reloader(buggy, lambda s, pools=(): FakeDemandProbe(), None)
    with caplog.at_level(logging.ERROR):
        outcome = asyncio.run(r.reload(s, probe))
    assert not outcome.ok and outcome.settings is s and outcome.probe is probe and outcome.policy is None
    assert "RuntimeError" in outcome.message and "old settings stay in force" in outcome.message
    (record,) = events(caplog, "reload_failed")
    assert record.exc_info is not None


def test_workers_need_only_their_two_keys_valid(tmp_path: Path) -> None:
    # A file the agent rejects on reload (bad MAX_PROCESSES) must not fail every worker start
    env = tmp_path / "dqagent.env"
    env.write_text('MAX_PROCESSES=lots\nDRAMATIQ_COMMAND="/bin/sleep infinity"\nWORKER_DIRECTORY=/srv/app\n')
    values, path = sources.read_values(env, environ={}, command="worker-exec")
    assert path == env
    assert parse_worker_command(values) == ("/bin/sleep infinity", "/srv/app")
    with pytest.raises(ConfigError, match="MAX_PROCESSES"):
        parse_settings(values)
    for key, bad in (("DRAMATIQ_COMMAND", '"unterminated'), ("DRAMATIQ_COMMAND", ""), ("WORKER_DIRECTORY", "rel")):
        with pytest.raises(ConfigError, match=key):
            parse_worker_command({**values, key: bad})


def test_target_per_worker_auto_is_described_as_auto() -> None:
    text = reload.describe_changes(settings(TARGET_PER_WORKER="auto"), settings(TARGET_PER_WORKER="12"))
    assert text == "TARGET_PER_WORKER auto -> 12"


# -- the Redis password: under systemd the file itself (0640 root:dqagent) > credential > REDIS_PASSWORD > file --

def _password_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, source: str | None, cred: str | None,
                  file: str | None) -> dict[str, str]:
    """CREDENTIALS_DIRECTORY and REDIS_PASSWORD_FILE, and the unit's password file (`sources.PASSWORD_SOURCE`),
    each file written unless None."""
    (tmp_path / "cred").mkdir()
    monkeypatch.setattr(sources, "PASSWORD_SOURCE", tmp_path / "redis-password")
    for path, text in ((tmp_path / "redis-password", source), (tmp_path / "cred" / "redis_password", cred),
                       (tmp_path / "file", file)):
        if text is not None:
            path.write_text(text)
    return {"CREDENTIALS_DIRECTORY": str(tmp_path / "cred"), "REDIS_PASSWORD_FILE": str(tmp_path / "file")}


@pytest.mark.parametrize(("reloading", "source", "cred", "env_pw", "file", "expected"), [
    (True, "fresh\n", "cred", "env", "file", "fresh"),  # a reload: the file as it is now, not the start's copy
    (False, "fresh\n", "cred", "env", "file", "cred"),  # the start: the credential (systemd's copy, or a drop-in's)
    (False, "", "secret", "", "file", "secret"),         # an empty file install made does not hide a credential
    (True, None, "cred", "env", "file", "cred"),         # the file deleted: the start's credential
    (True, "", "cred", "", "file", ""),                  # an emptied password file on reload: no password
    (True, "", "cred", "env", "file", "env"),            # ... REDIS_PASSWORD still applies
    (False, None, None, "env", "file", "env"),
    (False, None, None, "", "file", "file"),
])
def test_password_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, reloading: bool, source: str | None,
                             cred: str | None, env_pw: str, file: str | None, expected: str) -> None:
    environ = _password_env(tmp_path, monkeypatch, source, cred, file) | ({"REDIS_PASSWORD": env_pw} if env_pw else {})
    loaded = sources.load(None, environ=environ, cwd=tmp_path, reloading=reloading)
    assert (loaded.settings.redis_password, loaded.password_note) == (expected, "")


def test_unreadable_password_file_falls_back_to_the_credential_and_says_reload_cannot_apply(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    environ = _password_env(tmp_path, monkeypatch, None, "cred", None)
    (tmp_path / "redis-password").mkdir()  # unreadable, even by root
    assert sources.load(None, environ=environ, cwd=tmp_path).password_note == ""  # the start reads the credential
    loaded = sources.load(None, environ=environ, cwd=tmp_path, reloading=True)
    assert loaded.settings.redis_password == "cred"
    assert "a changed password applies at restart, not on reload" in loaded.password_note
    assert "\n" not in loaded.password_note


def test_the_agent_unit_runs_no_part_of_a_reload_as_root() -> None:
    # `ExecReload=+...` ran the venv's dqagent as root: a .pth file planted in a user-writable venv became root
    unit = (Path(__file__).resolve().parents[2] / "packaging/systemd/dqagent.service").read_text()
    exec_lines = [line for line in unit.splitlines() if line.startswith(("ExecReload=", "ExecStart", "ExecStop"))]
    assert exec_lines and not any(line.split("=", 1)[1].lstrip("-@:!").startswith("+") or "=!" in line
                                  for line in exec_lines), exec_lines
    assert "ExecReload=@DQAGENT@ reload --pid $MAINPID" in exec_lines


def test_answer_reader_never_follows_a_symlink_nor_reads_a_huge_file(tmp_path: Path) -> None:
    good = reload.Answer(41, 1, 5, True, "reloaded")
    victim = tmp_path / "victim.json"
    victim.write_text(good.to_json())
    (tmp_path / reload.ANSWER_NAME).symlink_to(victim)
    assert reload.read_answer(tmp_path) is None  # planted link: ignored, whatever it points to
    (tmp_path / reload.ANSWER_NAME).unlink()
    (tmp_path / reload.ANSWER_NAME).write_text(good.to_json() + " " * reload.ANSWER_MAX_BYTES)
    assert reload.read_answer(tmp_path) is None  # too big to be an answer
    (tmp_path / reload.ANSWER_NAME).write_text("[" * 50_000)
    assert reload.read_answer(tmp_path) is None  # deeply nested: not a RecursionError
    (tmp_path / reload.ANSWER_NAME).unlink()
    os.mkfifo(tmp_path / reload.ANSWER_NAME)
    assert reload.read_answer(tmp_path) is None  # a FIFO: no blocking open, no read
    (tmp_path / reload.ANSWER_NAME).unlink()
    (tmp_path / reload.ANSWER_NAME).write_text(good.to_json())
    assert reload.read_answer(tmp_path) == good

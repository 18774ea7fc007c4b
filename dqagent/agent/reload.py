"""`systemctl reload dqagent`: the running agent re-reads its settings, and says whether that worked.

systemd 252 has no `Type=notify-reload` (253), and `ExecReload=kill -HUP $MAINPID` is asynchronous:
systemctl would report success before anything happened. So the unit's `ExecReload=` runs
`dqagent reload --pid $MAINPID`, which signals the agent and waits for its answer:

- The client notes CLOCK_MONOTONIC, sends SIGHUP, and polls the answer file `reload.json` in the
  unit's `RuntimeDirectory=dqagent` (`$RUNTIME_DIRECTORY`, /run/dqagent) for an answer of that PID
  whose reload *began* after the signal was sent. Such a reload read the settings file after the
  operator's edit, whichever SIGHUP triggered it (several signals coalesce into one reload).
- The agent (between two ticks, never inside one): `RELOADING=1` with `MONOTONIC_USEC=`, read and
  validate the same file as at start, swap settings/policy/probe, `READY=1` (also when it failed),
  then the answer, written atomically (temporary file + rename). The PID and the workers stay.

The Redis password: systemd 252 copies the `LoadCredential=` file only at start. `dqagent install`
makes `/etc/dqagent/redis-password` readable by group dqagent (`0640 root:dqagent`), so the agent's
re-read takes the file itself (`sources._read_password`) and a new password applies on reload. No
part of a reload runs as root: `ExecReload=` runs this client as user dqagent, in the agent's
sandbox, so nothing in the venv (a `.pth` file, a package) is ever executed with root's rights
because of a reload, whoever may write the venv (docs/operations.md, "Security model").
The answer file holds no secret. Pure part: `plan_reload` and
`effective_settings`; effects: `Reloader` (agent side) and `request_reload` (client side).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import stat
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from dqagent.agent.pools import policies
from dqagent.broker.probes import prefetch_by_queue
from dqagent.core.policies import Policy, make_policy
from dqagent.errors import ConfigError, DqAgentError
from dqagent.report import logs
from dqagent.report.logs import event
from dqagent.settings import declarations
from dqagent.settings.config import Settings, redact_url
from dqagent.settings.parsers import DEFAULT_POOL
from dqagent.settings.pools import POOL_KEYS, Pool, probe_settings
from dqagent.settings.sources import Loaded, describe_source
from dqagent.settings.workercmd import startup_warnings, worker_shape

if TYPE_CHECKING:  # not imported at run time: `dqagent reload` (the client) stays light, no redis
    from dqagent.core.demand import DemandProbe

log = logging.getLogger(__name__)

#: The answer file, in the unit's RuntimeDirectory.
ANSWER_NAME = "reload.json"
#: Where `dqagent reload` looks when `$RUNTIME_DIRECTORY` is not set (run by hand as root or dqagent).
DEFAULT_RUNTIME_DIR = Path("/run/dqagent")
#: Largest answer file read: the agent writes about 200 bytes; anything bigger is not an answer.
ANSWER_MAX_BYTES = 64 * 1024
#: Longest wait for the agent's answer: below the unit's TimeoutStartSec (2 x GRACEFUL_SHUTDOWN_TIMEOUT
#: + 180 s, which bounds ExecReload=), above a tick that starts workers (the reload waits for it).
DEFAULT_TIMEOUT_S = 170.0

#: Rendered into the units by `dqagent install`; a change means a new Redis connection (declared per setting
#: in `dqagent.settings.declarations`).
NEEDS_INSTALL_FIELDS = declarations.NEEDS_INSTALL_FIELDS
PROBE_FIELDS = declarations.REDIS_FIELDS
_SECRET_FIELDS = ("redis_password", "rabbitmq_password")


def setting_key(field_name: str) -> str:
    """The setting (`.env` key) a `Settings` field comes from, e.g. check_interval_s -> CHECK_INTERVAL."""
    return declarations.FIELD_KEYS[field_name]


class ReloadPlan(NamedTuple):
    """Which changed settings a reload applies now, and which wait for `dqagent install` (setting keys)."""

    applied: tuple[str, ...]
    needs_install: tuple[str, ...]


def _changed_fields(old: Settings, new: Settings) -> list[str]:
    return [f.name for f in fields(Settings) if getattr(old, f.name) != getattr(new, f.name)]


def plan_reload(old: Settings, new: Settings) -> ReloadPlan:
    """Split the settings that differ between `old` and `new` into applied-live and needs-install (pure)."""
    changed = _changed_fields(old, new)
    return ReloadPlan(tuple(setting_key(f) for f in changed if f not in NEEDS_INSTALL_FIELDS),
                      tuple(setting_key(f) for f in changed if f in NEEDS_INSTALL_FIELDS))


def effective_settings(old: Settings, new: Settings) -> Settings:
    """`new`, except the needs-install fields keep `old`'s values (what the installed units carry)."""
    return replace(new, **{f: getattr(old, f) for f in NEEDS_INSTALL_FIELDS})


def describe_changes(old: Settings, new: Settings) -> str:
    """`MAX_PROCESSES 4 -> 2, REDIS_PASSWORD (changed)`: values of secrets never appear."""
    parts: list[str] = []
    for name in _changed_fields(old, new):
        key = setting_key(name)
        if name in _SECRET_FIELDS:
            parts.append(f"{key} (changed)")
            continue
        before, after = (_show(name, getattr(s, name)) for s in (old, new))
        parts.append(f"{key} {before} -> {after}")
    return ", ".join(parts)


def pools_needing_install(old: Sequence[Pool], new: Sequence[Pool]) -> tuple[str, ...]:
    """`pool io: WORKER_MEMORY_MAX`: a pool's own settings that changed and wait for `dqagent install` (its
    drop-ins); the default pool's are `plan_reload`'s."""
    was = {p.name: p for p in old if p.name != DEFAULT_POOL}
    return tuple(f"pool {p.name}: {key}" for p in new if p.name in was
                 for key in plan_reload(was[p.name].settings, p.settings).needs_install if key in POOL_KEYS)


def describe_pool_changes(old: Sequence[Pool], new: Sequence[Pool]) -> list[str]:
    """`pool io added`, `pool batch removed`, `pool io: MAX_PROCESSES 4 -> 2` (its own keys only; the default
    pool's changes are `describe_changes`')."""
    was = {p.name: p for p in old if p.name != DEFAULT_POOL}
    now = {p.name: p for p in new if p.name != DEFAULT_POOL}
    out = [f"pool {name} added" for name in now if name not in was]
    out += [f"pool {name} removed" for name in was if name not in now]
    for name in now.keys() & was.keys():
        own = [part for part in describe_changes(was[name].settings, now[name].settings).split(", ")
               if part.split(" ", 1)[0] in POOL_KEYS]
        if own:
            out.append(f"pool {name}: {', '.join(own)}")
    return out


def _show(name: str, value: Any) -> str:
    if name == "redis_url":
        return redact_url(value) if value else "''"
    if isinstance(value, tuple):
        return ",".join(value)
    if value is None:  # TARGET_PER_WORKER=auto
        return "auto"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value) if value != "" else "''"


@dataclass(frozen=True, slots=True)
class Answer:
    """What the agent tells `dqagent reload`; `began_ns` is CLOCK_MONOTONIC when the reload started."""

    pid: int
    generation: int
    began_ns: int
    ok: bool
    message: str

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> Answer | None:
        """The answer, or None for a file that is not (yet) one."""
        try:
            raw = json.loads(text)
            return cls(int(raw["pid"]), int(raw["generation"]), int(raw["began_ns"]), bool(raw["ok"]),
                       str(raw["message"]))
        except (ValueError, KeyError, TypeError, RecursionError):  # RecursionError: `[[[[...` nested deep
            return None


def runtime_dir(environ: dict[str, str] | None = None) -> Path | None:
    """The unit's RuntimeDirectory (`$RUNTIME_DIRECTORY`, first entry), or None outside systemd."""
    value = (os.environ if environ is None else environ).get("RUNTIME_DIRECTORY", "")
    return Path(value.split(":")[0]) if value else None


# -- agent side ----------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Outcome:
    """One reload as the agent applies it: the objects to use from now on (the old ones on failure)."""

    ok: bool
    message: str
    began_ns: int
    settings: Settings
    probe: DemandProbe
    #: The rebuilt policy, or None when the reload failed.
    policy: Policy | None
    #: Every pool from now on, the default pool first (as before on a failure).
    pools: tuple[Pool, ...] = ()
    #: The other pools' rebuilt policies, by name.
    pool_policies: dict[str, Policy] = field(default_factory=dict)


class Reloader:
    """The agent's side: re-reads the settings from where they came at start, answers the client.

    `read` is `sources.load` bound to the start's file, cwd and command; `make_probe` builds a demand
    probe for the settings and pools (`dqagent.broker.probes.open_probe`); `answer_dir` is None outside
    systemd (no client waits then).
    """

    def __init__(self, read: Callable[[], Loaded],
                 make_probe: Callable[[Settings, Sequence[Pool]], DemandProbe],
                 answer_dir: Path | None, *, monotonic_ns: Callable[[], int] = time.monotonic_ns,
                 pid: int | None = None) -> None:
        self.read = read
        self.make_probe = make_probe
        self.answer_dir = answer_dir
        self.monotonic_ns = monotonic_ns
        self.pid = os.getpid() if pid is None else pid
        self.generation = 0

    async def reload(self, old: Settings, probe: DemandProbe, old_pools: Sequence[Pool] = ()) -> Outcome:
        """Read and validate; on success return the new settings, policy and (if Redis changed) probe.

        On an invalid file: one ERROR line naming the key (event `reload_failed`), the old objects back.
        Never raises for a bad file; the old probe is closed only when a new one replaces it. An error
        no check foresaw (a bug) fails the reload the same way, with its traceback logged: the agent keeps
        running on the old settings instead of exiting into a restart loop.
        """
        began = self.monotonic_ns()
        old_pools = tuple(old_pools) or (Pool(DEFAULT_POOL, old),)
        try:
            return await self._reload(old, probe, began, old_pools)
        except Exception as exc:  # anything else: this reload failed, the agent goes on
            log.error("reload failed unexpectedly, the old settings stay in force: %s: %s", type(exc).__name__,
                      exc, exc_info=True, extra=event("reload_failed", key=""))
            return Outcome(False, f"reload failed unexpectedly ({type(exc).__name__}); the old settings stay in "
                           "force; see journalctl -u dqagent", began, old, probe, None, old_pools)

    async def _reload(self, old: Settings, probe: DemandProbe, began: int, old_pools: tuple[Pool, ...]) -> Outcome:
        try:
            loaded = self.read()
            # A command Dramatiq's parser rejects fails the reload as it fails a start (exit 78).
            shape = worker_shape(loaded.settings.dramatiq_command, os.cpu_count())
            pool_policies = policies(loaded.pools[1:])
        except ConfigError as exc:
            log.error("reload failed, the old settings stay in force: %s", exc,
                      extra=event("reload_failed", key=exc.key))
            return Outcome(False, f"{exc}; the old settings stay in force", began, old, probe, None, old_pools)
        source = describe_source(loaded.env_file)
        warn_unknown_settings(loaded)
        if loaded.password_note:
            log.warning("%s", loaded.password_note, extra=event("password_unavailable"))
        new = effective_settings(old, loaded.settings)
        was = {p.name: p for p in old_pools}
        pools = (Pool(DEFAULT_POOL, new), *(
            replace(p, settings=effective_settings(was[p.name].settings, p.settings)) if p.name in was else p
            for p in loaded.pools[1:]))
        applied, needs_install = plan_reload(old, loaded.settings)
        needs_install = (*needs_install, *pools_needing_install(old_pools, loaded.pools))
        if needs_install:
            log.warning("not applied until `dqagent install` and `systemctl restart dqagent` (the workers keep "
                        "running): %s", ", ".join(needs_install),
                        extra=event("reload_needs_install", keys=",".join(needs_install)))
        before, after = probe_settings(old, old_pools), probe_settings(new, pools)
        # RabbitMQ's estimate uses each pool's prefetch (its DRAMATIQ_COMMAND's threads): a change needs a new probe
        if any(getattr(before, f) != getattr(after, f) for f in PROBE_FIELDS) or (
                new.rabbitmq_url and prefetch_by_queue(old_pools) != prefetch_by_queue(pools)):
            fresh = self.make_probe(after, pools)
            await probe.close()
            probe = fresh
        note = _apply_logging(old, new)
        if note:
            log.warning("%s", note, extra=event("log_file_unavailable"))
        if new.dramatiq_command != old.dramatiq_command:  # as at start, for the new command
            for warning in startup_warnings(new, os.cpu_count()):
                log.warning("%s", warning, extra=event("config_warning"))
        changes = ", ".join(filter(None, (describe_changes(old, new), *describe_pool_changes(old_pools, pools))))
        log.info("settings reloaded from %s: %s", source, changes or "nothing changed",
                 extra=event("reloaded", changed=",".join(applied), settings_file=source))
        message = f"reloaded {source}: {changes or 'nothing changed'}" + (
            f"; not applied until dqagent install: {', '.join(needs_install)}" if needs_install else "")
        return Outcome(True, message, began, new, probe, make_policy(new, new.scaling_policy, shape=shape), pools,
                       pool_policies)

    def answer(self, outcome: Outcome) -> None:
        """Publish the answer for `dqagent reload` (atomically); a write failure is logged, not raised."""
        self.generation += 1
        if self.answer_dir is None:
            return
        answer = Answer(self.pid, self.generation, outcome.began_ns, outcome.ok, outcome.message)
        path = self.answer_dir / ANSWER_NAME
        tmp = path.with_name(f".{ANSWER_NAME}.{self.pid}")
        try:
            tmp.write_text(answer.to_json() + "\n", encoding="utf-8")
            tmp.replace(path)
        except OSError as exc:
            log.warning("cannot write the reload answer %s (%s): `dqagent reload` will time out", path,
                        exc.strerror, extra=event("reload_answer_failed"))


def warn_unknown_settings(loaded: Loaded) -> None:
    """One `unknown_setting` warning per key of the settings file that no setting declares (the agent calls
    it at start and on every reload; `dqagent check` fails such a key)."""
    for key in loaded.unknown_keys:
        log.warning("%s (in %s; the agent ignores it)", declarations.unknown_key_message(key),
                    describe_source(loaded.env_file), extra=event("unknown_setting", key=key,
                                                                   settings_file=describe_source(loaded.env_file)))


def _apply_logging(old: Settings, new: Settings) -> str:
    """Apply LOG_LEVEL (and LOG_FILE, by re-installing the handlers); returns `logs.setup`'s note."""
    if new.log_file != old.log_file:
        return logs.setup(new.log_level, new.log_file)
    if new.log_level != old.log_level:
        logging.getLogger().setLevel(new.log_level)
    return ""


# -- client side (`dqagent reload`) --------------------------------------------------------------

class ReloadError(DqAgentError):
    """The agent could not be signalled, or did not answer in time."""


def read_answer(directory: Path) -> Answer | None:
    """The answer in `directory`, or None: missing, a symlink, not a regular file, or too big.

    The directory is the agent's (user dqagent): whoever reads it, root by hand included, never follows
    a link planted there and never reads more than `ANSWER_MAX_BYTES`.
    """
    try:
        fd = os.open(directory / ANSWER_NAME, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        data = f.read(ANSWER_MAX_BYTES + 1)
    if len(data) > ANSWER_MAX_BYTES:
        return None
    return Answer.from_json(data.decode("utf-8", errors="replace"))


def request_reload(pid: int, directory: Path, timeout_s: float = DEFAULT_TIMEOUT_S, *,
                   kill: Callable[[int, int], None] = os.kill,
                   monotonic_ns: Callable[[], int] = time.monotonic_ns,
                   sleep: Callable[[float], None] = time.sleep, poll_s: float = 0.05) -> Answer:
    """SIGHUP the agent `pid` and wait for the answer of a reload that began after the signal.

    Raises `ReloadError` when the signal cannot be sent, the agent exits, or no answer comes within
    `timeout_s`; `PermissionError` when the caller may not signal `pid`.
    """
    if pid <= 0:
        raise ReloadError(f"no agent PID ({pid}): pass --pid (systemd sets $MAINPID for ExecReload=); "
                          "is dqagent.service running?")
    sent = monotonic_ns()
    try:
        kill(pid, signal.SIGHUP)
    except ProcessLookupError:
        raise ReloadError(f"no process {pid}: is dqagent.service running?") from None
    deadline = sent + int(timeout_s * 1e9)
    while True:
        answer = read_answer(directory)
        if answer is not None and answer.pid == pid and answer.began_ns >= sent:
            return answer
        if monotonic_ns() >= deadline:
            raise ReloadError(f"no answer from the agent (pid {pid}) in {directory / ANSWER_NAME} within "
                              f"{timeout_s:g}s; see journalctl -u dqagent")
        try:
            kill(pid, 0)
        except ProcessLookupError:
            raise ReloadError(f"the agent (pid {pid}) exited before answering; see journalctl -u dqagent") from None
        sleep(poll_s)

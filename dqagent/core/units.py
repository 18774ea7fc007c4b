"""What systemd tells about worker units, as the project's own records (pure: no D-Bus here).

The systemd modules convert D-Bus replies and signals into these at the boundary, so the reconciler,
the reporter, the jobs and `dqagent status` never see a variant or a row read by position.

Unit names are only ever built from validated instance numbers (`worker_unit()`), never from
unchecked text.

Three questions are asked of a unit's health, each answered here once:

- `UnitState.failed`: ActiveState `failed`. It holds its instance number until it is reset (the
  reconciler's phase `failing`, which reuses the number only after `ResetFailedUnit`).
- `UnitState.crashed`: failed, or waiting RestartSec after its process died (`auto-restart`). Not
  serving now: what the agent logs and names in STATUS= (`Census.failing`). It differs from
  `failed` because a unit in auto-restart is capacity on its way (systemd restarts it), so the
  reconciler counts it as coming, not as failing.
- `UnitState.crashed_since_start`: crashed, or running again after systemd restarted it since its
  last start (NRestarts > 0). What `dqagent status` explains (its exit, its last log line): an
  operator asking "why" wants the crash that systemd already recovered from too, while the agent
  would log a unit that runs again as failing on every tick.
"""

from __future__ import annotations

import re
import signal
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from dqagent.errors import AccessDeniedError, JobWaitTimeoutError, SystemdError, UnitNameError
from dqagent.settings.config import MAX_PROCESSES_LIMIT
from dqagent.settings.parsers import DEFAULT_POOL, POOL_NAME_PATTERN

WORKER_TEMPLATE = "dramatiq-worker"
WORKER_PATTERN = f"{WORKER_TEMPLATE}@*.service"
AGENT_UNIT = "dqagent.service"
#: Highest instance number a worker unit may have: MAX_PROCESSES' own limit, so the instance numbers are
#: exactly 1..1000 (`worker_unit`, and the polkit rule, which allows no others). With every number taken
#: (e.g. 1000 workers still stopping), fewer are started; the next tick starts the rest.
MAX_INSTANCE = MAX_PROCESSES_LIMIT
#: Exactly the names of instances 1..MAX_INSTANCE (1000), optionally after `<pool>-`: no 0, no leading zeros;
#: as the polkit rule allows.
_WORKER_RE = re.compile(rf"{WORKER_TEMPLATE}@(?:({POOL_NAME_PATTERN})-)?([1-9][0-9]{{0,2}}|1000)\.service")


#: Where `dqagent install` writes units, and the drop-in it writes for each instance of a pool from pools.d
#: (User=, WorkingDirectory=, Slice=, limits): systemd 252 reads no drop-in shared by `@<pool>-*` instances only.
UNIT_DIR = Path("/etc/systemd/system")
POOL_DROPIN = "60-dqagent-pool.conf"


def pool_dropin(pool: str, n: int, unit_dir: Path = UNIT_DIR) -> Path:
    """The drop-in of instance `n` of pool `pool` (not the default pool: its units take the template's)."""
    return unit_dir / f"{WORKER_TEMPLATE}@{pool}-{n}.service.d" / POOL_DROPIN


def worker_unit(instance: int, pool: str = DEFAULT_POOL) -> str:
    """The unit name of worker `instance` of `pool`; refuses anything but a positive instance number and a
    valid pool name (the default pool's units have no pool prefix: `dramatiq-worker@3`, `dramatiq-worker@io-3`)."""
    if not isinstance(instance, int) or isinstance(instance, bool) or not 1 <= instance <= MAX_INSTANCE:
        raise UnitNameError(f"worker instance must be an integer in 1..{MAX_INSTANCE}, got {instance!r}")
    if pool == DEFAULT_POOL:
        return f"{WORKER_TEMPLATE}@{instance}.service"
    if not isinstance(pool, str) or not re.fullmatch(POOL_NAME_PATTERN, pool):
        raise UnitNameError(f"pool name must match {POOL_NAME_PATTERN} (not 'default'), got {pool!r}")
    return f"{WORKER_TEMPLATE}@{pool}-{instance}.service"


def parse_worker(unit: str) -> tuple[str, int] | None:
    """(pool, instance number) of a worker unit name, or None for names dqagent does not manage."""
    match = _WORKER_RE.fullmatch(unit)
    if match is None or match.group(1) == DEFAULT_POOL:
        return None
    return match.group(1) or DEFAULT_POOL, int(match.group(2))


def worker_instance(unit: str) -> int | None:
    """The instance number of a worker unit name (of any pool), or None for names dqagent does not manage."""
    parsed = parse_worker(unit)
    return parsed[1] if parsed else None


def of_pool(states: Sequence[UnitState], pool: str) -> list[UnitState]:
    """The units of one pool, in the order given."""
    return [s for s in states if s.pool == pool]


def worker_pool(unit: str) -> str | None:
    """The pool of a worker unit name, or None for names dqagent does not manage."""
    parsed = parse_worker(unit)
    return parsed[0] if parsed else None


class ActiveState(StrEnum):
    ACTIVE = "active"
    RELOADING = "reloading"
    INACTIVE = "inactive"
    FAILED = "failed"
    ACTIVATING = "activating"
    DEACTIVATING = "deactivating"
    UNKNOWN = "unknown"

    @classmethod
    def of(cls, value: str) -> ActiveState:
        """systemd's ActiveState text; one it does not document reads as UNKNOWN (counted as coming)."""
        try:
            return cls(value)
        except ValueError:
            return cls.UNKNOWN


#: `ExecMainCode` values (siginfo's CLD_* codes, as systemd reports them).
CLD_EXITED, CLD_KILLED, CLD_DUMPED = 1, 2, 3


def describe_exit(code: int, status: int) -> str | None:
    """How a main process ended (ExecMainCode, ExecMainStatus) in words: "exit status 2", "killed by
    SIGKILL", "killed by SIGSEGV (core dumped)"; None if it has not ended (running, or never ran)."""
    if code == CLD_EXITED:
        return f"exit status {status}"
    if code in (CLD_KILLED, CLD_DUMPED):
        try:
            name = signal.Signals(status).name
        except ValueError:
            name = f"signal {status}"
        return f"killed by {name}" + (" (core dumped)" if code == CLD_DUMPED else "")
    return None


@dataclass(frozen=True, slots=True)
class UnitState:
    """One worker unit as systemd sees it right now."""

    unit: str
    instance: int
    active_state: ActiveState
    sub_state: str
    #: The main process, 0 if none (or not read: a brief read, see `SystemdClient.worker_states`).
    main_pid: int
    #: Realtime microseconds since the epoch when the unit last entered `active`, 0 if never (or not read).
    active_enter_us: int
    #: How often systemd's Restart= restarted it; -1 when not read (a brief read).
    n_restarts: int
    #: systemd's Result ("success", "exit-code", ...); "" when not read (a brief read of a unit in
    #: transition or inactive).
    result: str
    #: True while a job (start/stop/restart) is queued for the unit.
    has_job: bool
    #: The pending job's type ("start", "stop", "restart", ...), "" when none; its id, 0 when none.
    #: Who issued it is not known here: the agent compares with the jobs it has in flight itself.
    job_type: str = ""
    job_id: int = 0
    #: How the main process last ended (ExecMainCode: 1 exited, 2 killed, 3 dumped core; 0 not yet)
    #: and its exit status or signal number (ExecMainStatus). Both 0 for a running unit. In words:
    #: `describe_exit`.
    exec_main_code: int = 0
    exec_main_status: int = 0
    #: The pool the unit belongs to, by its name (`parse_worker`).
    pool: str = DEFAULT_POOL

    @property
    def running(self) -> bool:
        """Counted as capacity: active and its process running."""
        return self.active_state is ActiveState.ACTIVE and self.sub_state == "running"

    @property
    def occupied(self) -> bool:
        """Holds its instance number: running, or systemd is (re)starting or stopping it."""
        return self.active_state in (ActiveState.ACTIVE, ActiveState.ACTIVATING,
                                     ActiveState.RELOADING, ActiveState.DEACTIVATING)

    @property
    def failed(self) -> bool:
        """ActiveState failed: no process, and the number is held until it is reset (see the module)."""
        return self.active_state == ActiveState.FAILED

    @property
    def crashed(self) -> bool:
        """Not serving because its process ended: failed, or waiting RestartSec (see the module)."""
        return self.failed or self.sub_state == "auto-restart"

    @property
    def crashed_since_start(self) -> bool:
        """Crashed now, or restarted by systemd since its last start (see the module)."""
        return self.crashed or self.n_restarts > 0


@dataclass(frozen=True, slots=True)
class Seen:
    """A worker's Service properties as systemd last sent them (PropertiesChanged), no read needed.

    systemd flushes a unit's pending change signal before the JobRemoved of its job
    (dbus-job.c, `bus_job_send_removed_signal`), so at a job's end these are the unit's values then.
    """

    main_pid: int = 0
    n_restarts: int = -1
    #: systemd's Result ("success", "timeout", ...); after a stop, not "success" means failed.
    result: str = ""


@dataclass(frozen=True, slots=True)
class JobOutcome:
    """How one start or stop request ended: systemd's job result, or the error that stood for one.

    Callers tell a polkit refusal, a timeout and a missing unit apart by `error`'s type
    (`AccessDeniedError`, `SystemdTimeoutError`, `NoSuchUnitError`), never from text.
    """

    unit: str
    #: systemd's JobRemoved result: done, canceled, timeout, failed, dependency, skipped; "" with `error`.
    result: str = ""
    #: The unit's Service properties sent during the job, None if none arrived (then read them).
    seen: Seen | None = None
    #: No job result: the request was refused or failed, or the job's end was not seen (JobWaitTimeoutError).
    error: SystemdError | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and self.result == "done"

    @property
    def refused(self) -> bool:
        """polkit (or the bus policy) refused the caller: not the unit's failure."""
        return isinstance(self.error, AccessDeniedError)

    @property
    def text(self) -> str:
        """The outcome as logs and `scale-up/-down` show it: `done`, `error: <D-Bus error name>`, ..."""
        if self.error is None:
            return self.result
        if isinstance(self.error, JobWaitTimeoutError):
            return "timeout (no JobRemoved)"
        return f"error: {self.error.name}"

"""The only module that speaks to systemd (`org.freedesktop.systemd1`), over D-Bus with dbus-fast.

systemd is the single source of truth: nothing here caches unit state. Jobs are awaited through
`JobRemoved` (subscribed before the first StartUnit/StopUnit), and a `done` job is not taken as
proof of health: callers re-read the unit with `worker_states()`.

Unit names are only ever built from validated instance numbers (`worker_unit()`), never from
unchecked text.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import re
import signal
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from dbus_fast import BusType, Message, MessageType, Variant
from dbus_fast.aio import MessageBus
from dbus_fast.errors import DBusError

from dqagent.errors import (
    AccessDeniedError,
    BusConnectionError,
    NoSuchUnitError,
    SystemdError,
    SystemdTimeoutError,
    UnitNameError,
)
from dqagent.logs import event
from dqagent.reconciler import MAX_INSTANCE

log = logging.getLogger(__name__)

SYSTEMD = "org.freedesktop.systemd1"
MANAGER_PATH = "/org/freedesktop/systemd1"
MANAGER = "org.freedesktop.systemd1.Manager"
PROPERTIES = "org.freedesktop.DBus.Properties"
SERVICE = "org.freedesktop.systemd1.Service"
UNIT = "org.freedesktop.systemd1.Unit"
UNIT_PATH = "/org/freedesktop/systemd1/unit"
WORKER_TEMPLATE = "dramatiq-worker"
WORKER_PATTERN = f"{WORKER_TEMPLATE}@*.service"
#: Exactly the names of instances 1..MAX_INSTANCE (1000): no 0, no leading zeros; as the polkit rule allows.
_WORKER_RE = re.compile(rf"{WORKER_TEMPLATE}@([1-9][0-9]{{0,2}}|1000)\.service")
AGENT_UNIT = "dqagent.service"

#: D-Bus error names mapped onto the project's exceptions; anything else is a plain SystemdError.
#: Errors that mean the unit was unloaded between ListUnitsByPatterns and reading it.
_VANISHED = frozenset({"org.freedesktop.DBus.Error.UnknownObject", "org.freedesktop.systemd1.NoSuchUnit",
                       "org.freedesktop.DBus.Error.UnknownMethod", "org.freedesktop.DBus.Error.UnknownInterface"})

_ERRORS: dict[str, type[SystemdError]] = {
    "org.freedesktop.DBus.Error.AccessDenied": AccessDeniedError,
    "org.freedesktop.DBus.Error.InteractiveAuthorizationRequired": AccessDeniedError,
    "org.freedesktop.systemd1.NoSuchUnit": NoSuchUnitError,
    "org.freedesktop.systemd1.UnitMasked": SystemdError,
}


def refused_by_polkit(result: str) -> bool:
    """Whether a job result or error text (e.g. `error: ...AccessDenied`) is a polkit/bus refusal."""
    return any(name in result for name, kind in _ERRORS.items() if issubclass(kind, AccessDeniedError))


class ActiveState(StrEnum):
    ACTIVE = "active"
    RELOADING = "reloading"
    INACTIVE = "inactive"
    FAILED = "failed"
    ACTIVATING = "activating"
    DEACTIVATING = "deactivating"
    UNKNOWN = "unknown"


def worker_unit(instance: int) -> str:
    """The unit name of worker `instance`; refuses anything but a positive instance number."""
    if not isinstance(instance, int) or isinstance(instance, bool) or not 1 <= instance <= MAX_INSTANCE:
        raise UnitNameError(f"worker instance must be an integer in 1..{MAX_INSTANCE}, got {instance!r}")
    return f"{WORKER_TEMPLATE}@{instance}.service"


def worker_instance(unit: str) -> int | None:
    """The instance number of a worker unit name, or None for names dqagent does not manage."""
    match = _WORKER_RE.fullmatch(unit)
    return int(match.group(1)) if match else None


def unit_from_path(path: str) -> str:
    """The unit name of a systemd unit object path (sd-bus label escaping: `_2d` is `-`, ...)."""
    label = path.rpartition("/")[2]
    return re.sub(r"_([0-9a-f]{2})", lambda m: chr(int(m.group(1), 16)), label)


@dataclass(frozen=True, slots=True)
class UnitState:
    """One worker unit as systemd sees it right now."""

    unit: str
    instance: int
    active_state: ActiveState
    sub_state: str
    #: The main process, 0 if none (or not read: a brief read, see `worker_states`).
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
    #: and its exit status or signal number (ExecMainStatus). Both 0 for a running unit.
    exec_main_code: int = 0
    exec_main_status: int = 0

    @property
    def exit_status(self) -> str:
        """The main process's last end as text ("exit status 2", "signal SIGKILL"), "" if none."""
        if self.exec_main_code == 1:
            return f"exit status {self.exec_main_status}"
        if self.exec_main_code in (2, 3):
            try:
                name = signal.Signals(self.exec_main_status).name
            except ValueError:
                name = str(self.exec_main_status)
            return f"signal {name}" + (" (core dumped)" if self.exec_main_code == 3 else "")
        return ""

    @property
    def running(self) -> bool:
        """Counted as capacity: active and its process running."""
        return self.active_state is ActiveState.ACTIVE and self.sub_state == "running"

    @property
    def occupied(self) -> bool:
        """Holds its instance number: running, or systemd is (re)starting or stopping it."""
        return self.active_state in (ActiveState.ACTIVE, ActiveState.ACTIVATING,
                                     ActiveState.RELOADING, ActiveState.DEACTIVATING)


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
    """How systemd finished a job: done, canceled, timeout, failed, dependency, skipped."""

    unit: str
    result: str
    #: The unit's Service properties sent during the job, None if none arrived (then read them).
    seen: Seen | None = None

    @property
    def ok(self) -> bool:
        return self.result == "done"


def _state(value: str) -> ActiveState:
    try:
        return ActiveState(value)
    except ValueError:
        return ActiveState.UNKNOWN


#: systemctl's own default for a D-Bus call (DBUS_TIMEOUT overrides it).
DEFAULT_CALL_TIMEOUT_S = 25.0
#: Calls in flight at once: far below dbus-daemon's 128 pending replies per connection.
DEFAULT_MAX_PENDING_CALLS = 48
#: How often a job still awaited is checked against `ListJobs` (a lost JobRemoved costs at most this).
JOB_RECHECK_S = 15.0
BUS_DRIVER = "org.freedesktop.DBus"
_NO_REPLY = "org.freedesktop.DBus.Error.NoReply"
#: Calls that only read, safe to send again when systemd left the bus before answering (daemon-reexec).
_READS = frozenset({"Get", "ListUnitsByPatterns", "ListUnitsByNames", "ListJobs", "LoadUnit"})
#: The Service properties kept from PropertiesChanged (all EMITS_CHANGE in dbus-service.c).
_SEEN_PROPS = frozenset({"MainPID", "NRestarts", "Result"})
#: The properties of a running unit that are read once and then followed through PropertiesChanged
#: (EMITS_CHANGE in dbus-unit.c and dbus-service.c): a tick over 500 running units makes no call.
_FOLLOWED = frozenset({*_SEEN_PROPS, "ActiveEnterTimestamp"})
_ALREADY_SUBSCRIBED = "org.freedesktop.systemd1.AlreadySubscribed"
#: Unit properties read besides ListUnitsByPatterns' row: for a running unit only the first four
#: (systemd resets Result and ExecMain* when it starts a unit), for any other unit all six.
_RUNNING_PROPS = (("Service", "MainPID"), ("Unit", "ActiveEnterTimestamp"), ("Service", "NRestarts"),
                  ("Service", "Result"))
_EXIT_PROPS = (("Service", "ExecMainCode"), ("Service", "ExecMainStatus"))
#: The interface of each property a brief read may ask of a running unit.
_RUNNING_PROP_IFACE = {name: iface for iface, name in _RUNNING_PROPS}
#: The start check of a running unit: its PID, and whether systemd restarted it since.
_STARTED_RUNNING_PROPS = (("Service", "MainPID"), ("Service", "NRestarts"))
#: States a brief read takes from the row alone: a unit in transition or inactive (the loop counts it).
_ROW_ONLY = frozenset({ActiveState.ACTIVATING, ActiveState.DEACTIVATING, ActiveState.RELOADING,
                       ActiveState.INACTIVE})


@dataclass(slots=True)
class _Job:
    """A job we queued and still await: its JobRemoved result lands in `future`."""

    unit: str
    verb: str
    future: asyncio.Future[str]
    #: When a ListJobs re-check last saw systemd still holding the job (loop time), -inf if never.
    listed_at: float = -math.inf


class SystemdClient:
    """A connection to systemd's manager. `connect()` before use, `close()` after.

    `bus_address` is for tests (a container's bus); by default the system bus. Every call is bounded
    by `call_timeout_s` (raising `SystemdTimeoutError`) and at most `max_pending_calls` are in
    flight at once, so 1,000 units never hit the bus's pending-reply limit.

    systemd's bus name is followed through `NameOwnerChanged`: after `daemon-reexec` systemd comes
    back under a new unique name; job signals are accepted from the current owner only (any peer can
    send a signal), the subscription is renewed, and jobs whose `JobRemoved` was lost meanwhile are
    resolved from `ListJobs` and the unit's state instead of waiting out their timeout.
    """

    def __init__(self, bus_address: str | None = None, call_timeout_s: float = DEFAULT_CALL_TIMEOUT_S,
                 max_pending_calls: int = DEFAULT_MAX_PENDING_CALLS, job_recheck_s: float = JOB_RECHECK_S) -> None:
        self._address = bus_address
        self._timeout_s = call_timeout_s
        self._slots = asyncio.Semaphore(max_pending_calls)
        self._recheck_s = job_recheck_s
        self._bus: MessageBus | None = None
        self._jobs: dict[str, _Job] = {}
        self._early: dict[str, str] = {}
        #: Service properties from PropertiesChanged of the units we have a job queued for.
        self._seen: dict[str, dict[str, Any]] = {}
        #: Worker units' _FOLLOWED properties as last read or signalled, and how many signals each
        #: unit had (a read overtaken by a signal is not kept). Cleared when systemd re-executes.
        self._known: dict[str, dict[str, Any]] = {}
        self._signals: dict[str, int] = {}
        self._systemd_owner = ""
        self._owner_signalled = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._recheck: asyncio.Task[None] | None = None
        self._recheck_at = -math.inf
        #: How many times systemd's bus name got a new owner since connect (daemon-reexec), for tests.
        self.owner_changes = 0

    async def connect(self) -> None:
        """Connect and subscribe to job signals; raises BusConnectionError or SystemdTimeoutError."""
        try:
            bus = MessageBus(bus_address=self._address) if self._address else MessageBus(bus_type=BusType.SYSTEM)
            self._bus = await asyncio.wait_for(bus.connect(), self._timeout_s)
        except TimeoutError:
            raise BusConnectionError(f"no answer from the system bus within {self._timeout_s:g}s") from None
        except (OSError, DBusError, EOFError) as exc:
            raise BusConnectionError(f"cannot connect to the system bus: {exc}") from None
        self._bus.add_message_handler(self._on_message)
        # Follow systemd's bus name first, so a re-exec during the rest of connect() is not missed.
        await self._call_bus("AddMatch", "s", [
            f"type='signal',sender='{BUS_DRIVER}',interface='{BUS_DRIVER}',member='NameOwnerChanged',"
            f"arg0='{SYSTEMD}'"])
        (owner,) = await self._call_bus("GetNameOwner", "s", [SYSTEMD])
        if not self._owner_signalled:
            self._systemd_owner = str(owner)
        await self._call_bus("AddMatch", "s", [
            f"type='signal',sender='{SYSTEMD}',interface='{MANAGER}',member='JobRemoved'"])
        for member in ("UnitNew", "UnitRemoved"):  # a unit object that comes or goes: forget what it was
            await self._call_bus("AddMatch", "s", [
                f"type='signal',sender='{SYSTEMD}',interface='{MANAGER}',member='{member}'"])
        # Sent anyway to subscribers: a start or stop is judged from them, and a running unit's
        # properties are followed instead of read again at every tick.
        for iface in (SERVICE, UNIT):
            await self._call_bus("AddMatch", "s", [
                f"type='signal',sender='{SYSTEMD}',interface='{PROPERTIES}',member='PropertiesChanged',"
                f"path_namespace='{UNIT_PATH}',arg0='{iface}'"])
        await self._subscribe()

    def close(self) -> None:
        for task in (*self._tasks, self._recheck):
            if task is not None:
                task.cancel()
        if self._bus is not None:
            self._bus.disconnect()
            self._bus = None

    async def wait_disconnected(self) -> None:
        """Returns when the bus connection is lost (the agent then exits for systemd to restart it)."""
        bus = self._require()
        with contextlib.suppress(Exception):
            await bus.wait_for_disconnect()  # type: ignore[no-untyped-call]

    @property
    def connected(self) -> bool:
        return self._bus is not None and self._bus.connected

    # -- low level -------------------------------------------------------------------------------

    def _require(self) -> MessageBus:
        if self._bus is None or not self._bus.connected:
            raise BusConnectionError("not connected to the system bus")
        return self._bus

    def _on_message(self, msg: Message) -> bool | None:
        if msg.message_type is not MessageType.SIGNAL:
            return None
        if (msg.member == "JobRemoved" and msg.interface == MANAGER and msg.signature == "uoss"
                and msg.sender == self._systemd_owner and self._systemd_owner):
            _id, job, _unit, result = msg.body
            self._finish(str(job), str(result))
        elif (msg.member in ("UnitNew", "UnitRemoved") and msg.interface == MANAGER and msg.signature == "so"
              and msg.sender == self._systemd_owner and self._systemd_owner):
            # systemd announces a (re)loaded unit object with UnitNew and no properties: what was known of
            # the name is of an unloaded object (a garbage-collected worker whose number is reused).
            self._forget(str(msg.body[0]))
        elif (msg.member == "PropertiesChanged" and msg.interface == PROPERTIES and msg.signature == "sa{sv}as"
              and msg.sender == self._systemd_owner and msg.body[0] in (SERVICE, UNIT) and msg.path):
            self._changed(unit_from_path(msg.path), msg.body[1], msg.body[2])
        elif (msg.member == "NameOwnerChanged" and msg.sender == BUS_DRIVER and msg.interface == BUS_DRIVER
              and msg.signature == "sss" and msg.body[0] == SYSTEMD):
            self._owner_changed(str(msg.body[2]))
        return None

    def _changed(self, unit: str, changed: dict[str, Variant], invalidated: list[str]) -> None:
        """systemd's PropertiesChanged of a unit: follow the worker units' _FOLLOWED properties."""
        if worker_instance(unit) is None:
            return
        self._signals[unit] = self._signals.get(unit, 0) + 1
        values = {k: v.value for k, v in changed.items() if k in _FOLLOWED}
        known = self._known.setdefault(unit, {})
        known.update(values)
        for name in invalidated:
            known.pop(name, None)
        job = self._seen.get(unit)
        if job is not None:  # a unit with a job of ours in flight
            job.update((k, v) for k, v in values.items() if k in _SEEN_PROPS)

    def _forget(self, unit: str) -> None:
        if self._known.pop(unit, None) is not None or unit in self._signals:
            self._signals[unit] = self._signals.get(unit, 0) + 1  # a read under way is not kept either

    async def _followed(self, unit: str, path: str, iface: str, name: str) -> Any:
        """A _FOLLOWED property of a running unit: as last read or signalled, else read (and kept)."""
        known = self._known.get(unit)
        if known is not None and name in known:
            return known[name]
        signals, epoch = self._signals.get(unit, 0), self.owner_changes
        value = await self._get(path, iface, name)
        if self._signals.get(unit, 0) == signals and self.owner_changes == epoch:  # no signal overtook it
            self._known.setdefault(unit, {})[name] = value
        return value

    def _finish(self, job: str, result: str) -> None:
        pending = self._jobs.pop(job, None)
        if pending is None:
            # The job may end before StartUnit's reply reaches us: keep the result briefly.
            self._early[job] = result
            if len(self._early) > 1000:
                self._early.pop(next(iter(self._early)))
        elif not pending.future.done():
            pending.future.set_result(result)

    def _owner_changed(self, new_owner: str) -> None:
        """systemd left the bus ("" during a re-exec) or came back under a new unique name."""
        self._owner_signalled = True
        if new_owner == self._systemd_owner:
            return
        self._systemd_owner = new_owner
        if new_owner:
            self.owner_changes += 1
            self._known.clear()  # signals sent while systemd was away are lost
            task = asyncio.get_running_loop().create_task(self._after_reexec(new_owner))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _after_reexec(self, owner: str) -> None:
        """Renew the subscription, then settle every job whose JobRemoved fell into the gap."""
        try:
            await self._subscribe()
            await self._recheck_jobs()
        except (SystemdError, BusConnectionError) as exc:
            log.warning("systemd is back on the bus as %s but did not answer: %s; jobs are re-checked "
                        "every %gs", owner, exc, extra=event("systemd_reexec", error=str(exc)))
            return
        log.info("systemd is back on the bus as %s (daemon-reexec): subscribed again", owner,
                 extra=event("systemd_reexec"))

    async def _subscribe(self) -> None:
        try:
            await self._manager("Subscribe", "", [])
        except SystemdError as exc:
            if exc.name != _ALREADY_SUBSCRIBED:  # systemd keeps subscribers across a re-exec
                raise

    async def _recheck_jobs(self) -> None:
        """Resolve awaited jobs that no longer exist (their JobRemoved was lost), from the unit's state.

        A job still listed is left alone: its JobRemoved will come. A JobRemoved sent before the
        ListJobs reply is processed before it, so a finished job is never resolved twice.
        """
        if not self._jobs:
            return
        (rows,) = await self._manager("ListJobs", "", [])
        alive = {str(r[4]) for r in rows}
        now = asyncio.get_running_loop().time()
        for job in alive & self._jobs.keys():
            self._jobs[job].listed_at = now
        gone = {job: p for job, p in self._jobs.items() if job not in alive and not p.future.done()}
        if not gone:
            return
        (units,) = await self._manager("ListUnitsByNames", "as", [sorted({p.unit for p in gone.values()})])
        active = {str(r[0]): _state(str(r[3])) for r in units}
        for job, p in gone.items():
            state = active.get(p.unit, ActiveState.INACTIVE)
            if p.verb == "StartUnit":
                ok = state in (ActiveState.ACTIVE, ActiveState.RELOADING)
            else:
                ok = state in (ActiveState.INACTIVE, ActiveState.FAILED)
            log.debug("job %s for %s ended unseen; %s is %s", job, p.unit, p.unit, state)
            self._finish(job, "done" if ok else "failed")

    async def _recheck_shared(self) -> None:
        """One `_recheck_jobs` for all the jobs waiting around then (500 stops make one ListJobs)."""
        loop = asyncio.get_running_loop()
        if loop.time() - self._recheck_at >= self._recheck_s / 2:
            self._recheck_at = loop.time()
            self._recheck = loop.create_task(self._recheck_jobs())
        if self._recheck is not None:
            with contextlib.suppress(SystemdError, BusConnectionError):
                await asyncio.shield(self._recheck)

    async def _call(self, destination: str, path: str, interface: str, member: str,
                    signature: str, body: list[Any]) -> list[Any]:
        """One call; a read that systemd dropped by leaving the bus (daemon-reexec: the bus answers
        NoReply, "disconnected without replying") is sent once more when systemd is back."""
        owner = self._systemd_owner
        try:
            return await self._call_once(destination, path, interface, member, signature, body)
        except SystemdError as exc:
            if (destination != SYSTEMD or member not in _READS or exc.name != _NO_REPLY
                    or isinstance(exc, SystemdTimeoutError)):
                raise
            # Back under a new unique name (NameOwnerChanged), or this NoReply was something else.
            loop = asyncio.get_running_loop()
            deadline = loop.time() + self._timeout_s
            while self._systemd_owner in ("", owner):
                if loop.time() >= deadline:
                    raise
                await asyncio.sleep(0.05)
            log.debug("%s dropped by systemd leaving the bus (%s); sending it again", member, exc.text)
            return await self._call_once(destination, path, interface, member, signature, body)

    async def _call_once(self, destination: str, path: str, interface: str, member: str,
                         signature: str, body: list[Any]) -> list[Any]:
        bus = self._require()
        msg = Message(destination=destination, path=path, interface=interface, member=member,
                      signature=signature, body=body)
        async with self._slots:
            try:
                reply = await asyncio.wait_for(bus.call(msg), self._timeout_s)
            except TimeoutError:
                who = "the bus" if destination == BUS_DRIVER else "systemd"
                raise SystemdTimeoutError(_NO_REPLY, f"{who} did not answer {member} within "
                                                     f"{self._timeout_s:g}s (DBUS_TIMEOUT)") from None
            except (OSError, EOFError) as exc:
                raise BusConnectionError(f"system bus connection lost: {exc}") from None
        if reply is None:
            raise BusConnectionError("no reply from the system bus")
        if reply.message_type is MessageType.ERROR:
            name = reply.error_name or "org.freedesktop.DBus.Error.Failed"
            text = str(reply.body[0]) if reply.body else name
            raise _ERRORS.get(name, SystemdError)(name, text)
        return list(reply.body)

    async def _manager(self, member: str, signature: str, body: list[Any]) -> list[Any]:
        return await self._call(SYSTEMD, MANAGER_PATH, MANAGER, member, signature, body)

    async def _call_bus(self, member: str, signature: str, body: list[Any]) -> list[Any]:
        return await self._call(BUS_DRIVER, "/org/freedesktop/DBus", BUS_DRIVER, member, signature, body)

    async def _get(self, path: str, interface: str, name: str) -> Any:
        (value,) = await self._call(SYSTEMD, path, PROPERTIES, "Get", "ss", [f"{SYSTEMD}.{interface}", name])
        return value.value if isinstance(value, Variant) else value

    async def _await_job(self, job: str, unit: str, verb: str, timeout_s: float) -> str:
        """The job's result from JobRemoved; re-checked every JOB_RECHECK_S in case a signal was lost.

        A job systemd still lists is awaited as long as it lists it, as `systemctl start` does: 500
        starts queued at once end over minutes, and systemd's own TimeoutStartSec/TimeoutStopSec
        bound each job once it runs. `timeout_s` bounds the wait since systemd last confirmed the
        job (its ListJobs), so a systemd that stops answering still ends the wait.
        """
        if job in self._early:
            return self._early.pop(job)
        loop = asyncio.get_running_loop()
        pending = _Job(unit, verb, loop.create_future())
        self._jobs[job] = pending
        began = loop.time()
        try:
            while not pending.future.done():
                remaining = max(began, pending.listed_at) + timeout_s - loop.time()
                if remaining <= 0:
                    return "timeout (no JobRemoved)"
                with contextlib.suppress(TimeoutError):
                    return await asyncio.wait_for(asyncio.shield(pending.future), min(remaining, self._recheck_s))
                await self._recheck_shared()
            return pending.future.result()
        finally:
            self._jobs.pop(job, None)

    async def _run_jobs(self, member: str, units: Sequence[str], timeout_s: float, mode: str) -> list[JobOutcome]:
        async def one(unit: str) -> JobOutcome:
            mine: dict[str, Any] = {}
            self._seen[unit] = mine  # only what systemd sends from now on describes this job
            try:
                try:
                    (job,) = await self._manager(member, "ss", [unit, mode])
                except SystemdError as exc:
                    return JobOutcome(unit, f"error: {exc.name}")
                result = await self._await_job(str(job), unit, member, timeout_s)
                # Another job on the unit meanwhile took the slot: then this one's values are unknown.
                props = mine if self._seen.get(unit) is mine else None
            finally:
                if self._seen.get(unit) is mine:
                    del self._seen[unit]
            seen = None if not props else Seen(int(props.get("MainPID", 0)), int(props.get("NRestarts", -1)),
                                               str(props.get("Result", "")))
            return JobOutcome(unit, result, seen)

        return list(await asyncio.gather(*(one(u) for u in units)))

    # -- what the agent uses ---------------------------------------------------------------------

    async def start_units(self, units: Sequence[str], timeout_s: float = 90,
                          mode: str = "fail") -> list[JobOutcome]:
        """Start units concurrently and wait for each job's result.

        Job mode `fail`: a unit with a conflicting job queued by someone else (an operator's stop or
        restart) is left alone and reported as `error: org.freedesktop.systemd1.TransactionIsDestructive`,
        never cancelled as `replace` would.
        """
        return await self._run_jobs("StartUnit", units, timeout_s, mode)

    async def stop_units(self, units: Sequence[str], timeout_s: float = 600,
                         mode: str = "fail") -> list[JobOutcome]:
        """Stop units concurrently and wait for each job's result (graceful stops may be slow).

        Job mode `fail` as for `start_units`: an operator's pending job is never cancelled.
        """
        return await self._run_jobs("StopUnit", units, timeout_s, mode)

    async def reset_failed(self, unit: str) -> None:
        """Clear a failed state (and start-limit counter) before reusing an instance number."""
        with contextlib.suppress(NoSuchUnitError):
            await self._manager("ResetFailedUnit", "s", [unit])

    async def unit_state(self, unit: str, brief: bool = False) -> UnitState:
        """Read one worker unit now; `brief`: a unit in transition or inactive from its row alone (one
        call), as for `worker_states`.

        Like LoadUnit, this loads the unit if needed (an unused instance reads as inactive/dead).
        """
        if worker_instance(unit) is None:
            raise UnitNameError(f"not a dqagent worker unit: {unit!r}")
        (rows,) = await self._manager("ListUnitsByNames", "as", [[unit]])
        row = next((r for r in rows if str(r[0]) == unit), None)
        if row is None:
            raise NoSuchUnitError("org.freedesktop.systemd1.NoSuchUnit", f"unit {unit} is not loaded")
        return await self._from_row(row, brief)

    async def started_states(self, units: Sequence[str]) -> list[UnitState]:
        """The units just started, for the start check, in the order given: one ListUnitsByNames for
        all, then MainPID and NRestarts of a running unit (ActiveEnterTimestamp 0: not read) and
        everything of any other. Loads a unit if needed (a vanished one reads as inactive/dead)."""
        if any(worker_instance(u) is None for u in units):
            raise UnitNameError(f"not dqagent worker units: {units!r}")
        (rows,) = await self._manager("ListUnitsByNames", "as", [list(units)])
        by_name = {str(r[0]): r for r in rows}
        missing = [u for u in units if u not in by_name]
        if missing:
            raise NoSuchUnitError("org.freedesktop.systemd1.NoSuchUnit", f"unit {missing[0]} is not loaded")
        # Read live, not from `_known`: a busy systemd holds back change signals, and a check must see
        # a crash and restart within PROCESS_STARTUP_DELAY.
        return list(await asyncio.gather(*(self._from_row(by_name[u], running_props=_STARTED_RUNNING_PROPS,
                                                          live=True) for u in units)))

    @staticmethod
    def _row_running(row: Sequence[Any]) -> bool:
        """A ListUnits row (name, description, load, active, sub, ...) of a unit whose process runs."""
        return str(row[3]) == ActiveState.ACTIVE and str(row[4]) == "running"

    def _wanted(self, row: Sequence[Any], brief: bool,
                running_props: tuple[tuple[str, str], ...] | None) -> tuple[tuple[str, str], ...]:
        """The properties a row lacks (see _RUNNING_PROPS); `brief`: fewer of them (see `worker_states`);
        `running_props`: those of a running unit."""
        # Rows are (name, description, load, active, sub, followed, path, job id, job type, job path).
        if self._row_running(row):
            return running_props if running_props is not None else _RUNNING_PROPS
        if brief and _state(str(row[3])) in _ROW_ONLY and str(row[4]) != "auto-restart":
            return ()
        return _RUNNING_PROPS + _EXIT_PROPS

    def _from_known(self, row: Sequence[Any], wanted: tuple[tuple[str, str], ...]) -> UnitState | None:
        """The row's state without a call, if nothing is wanted or a running unit's wanted properties are
        all followed and known; None if something must be read. (No task per unit: a tick over 500
        followed units costs the listing and little else.)"""
        if not wanted:
            return self._state_of(row, {})
        known = self._known.get(str(row[0])) if self._row_running(row) else None
        if known is None or any(name not in known for _, name in wanted):
            return None
        return self._state_of(row, {name: known[name] for _, name in wanted})

    async def _from_row(self, row: Sequence[Any], brief: bool = False,
                        running_props: tuple[tuple[str, str], ...] | None = None, live: bool = False) -> UnitState:
        """A UnitState from a ListUnits row plus the properties `_wanted` names, followed ones from
        `_known` when they are there (`live`: all read now)."""
        wanted = self._wanted(row, brief, running_props)
        known = None if live else self._from_known(row, wanted)
        if known is not None:
            return known
        unit, path = str(row[0]), str(row[6])
        running = self._row_running(row) and not live
        values = await asyncio.gather(*(self._followed(unit, path, iface, name) if running and name in _FOLLOWED
                                        else self._get(path, iface, name) for iface, name in wanted))
        return self._state_of(row, dict(zip((name for _, name in wanted), values, strict=True)))

    @staticmethod
    def _state_of(row: Sequence[Any], read: dict[str, Any]) -> UnitState:
        unit = str(row[0])
        instance = worker_instance(unit)
        assert instance is not None
        active, sub = _state(str(row[3])), str(row[4])
        running = SystemdClient._row_running(row)
        # Not read: systemd resets Result to success at every start; NRestarts reads as -1 (unknown).
        props = {"MainPID": 0, "ActiveEnterTimestamp": 0, "NRestarts": -1, "Result": "success" if running else "",
                 **read}
        job_id = int(row[7])
        return UnitState(
            unit=unit, instance=instance, active_state=active, sub_state=sub,
            main_pid=int(props["MainPID"]), active_enter_us=int(props["ActiveEnterTimestamp"]),
            n_restarts=int(props["NRestarts"]), result=str(props["Result"]), has_job=job_id != 0,
            job_type=str(row[8]) if job_id else "", job_id=job_id,
            exec_main_code=int(props.get("ExecMainCode", 0)), exec_main_status=int(props.get("ExecMainStatus", 0)),
        )

    async def worker_states(self, brief: Sequence[str] | None = None) -> list[UnitState]:
        """Every loaded worker unit dqagent manages, by instance number.

        One ListUnitsByPatterns, then a few single-property reads per unit (much cheaper for systemd
        than GetAll), under the client's bound on calls in flight. `brief` (the loop's ticks, its
        adoption, `scale-up`; every second with hundreds of units) names the only properties read of
        a running unit, among MainPID, ActiveEnterTimestamp, NRestarts, Result (those not read are
        0, 0, -1 and "success", which systemd sets at every start), and a unit in transition or
        inactive (activating, deactivating, inactive; not a crashed one in RestartSec) is read from
        its row alone; crashed and failed units are read in full, as without `brief`.
        """
        (rows,) = await self._manager("ListUnitsByPatterns", "asas", [[], [WORKER_PATTERN]])
        wanted = [r for r in rows if worker_instance(str(r[0])) is not None]
        props = None if brief is None else tuple((_RUNNING_PROP_IFACE[name], name) for name in brief)
        out: list[UnitState] = []
        to_read = []
        for r in wanted:
            known = self._from_known(r, self._wanted(r, brief is not None, props))
            if known is None:
                to_read.append(r)
            else:
                out.append(known)
        states = await asyncio.gather(*(self._from_row(r, brief is not None, props) for r in to_read),
                                      return_exceptions=True)
        for state in states:
            if isinstance(state, UnitState):
                out.append(state)
            elif not (isinstance(state, SystemdError) and state.name in _VANISHED):
                raise state  # a unit that went away between list and read is skipped; nothing else
        return sorted(out, key=lambda s: s.instance)

    async def worker_memory(self) -> list[int]:
        """MemoryCurrent (bytes) of every running worker, for the guard (issue 14); workers without
        memory accounting (systemd answers UINT64_MAX, "[not set]") or gone meanwhile are left out."""
        (rows,) = await self._manager("ListUnitsByPatterns", "asas", [["active"], [WORKER_PATTERN]])
        paths = [str(r[6]) for r in rows if worker_instance(str(r[0])) is not None and str(r[4]) == "running"]
        values = await asyncio.gather(*(self._get(p, "Service", "MemoryCurrent") for p in paths),
                                      return_exceptions=True)
        return [int(v) for v in values if isinstance(v, int) and 0 <= v < 2**64 - 1]

    async def unit_property(self, unit: str, interface: str, name: str) -> Any:
        """One property of any unit (read-only; used for the agent's own unit)."""
        (path,) = await self._manager("LoadUnit", "s", [unit])
        return await self._get(str(path), interface, name)

    async def pending_job_type(self, unit: str = AGENT_UNIT) -> str:
        """The type of the job queued on `unit` ("stop", "restart", ...), or "" if none.

        This is how the agent tells `systemctl stop` (stop the workers) from `systemctl restart`
        (leave them for the next agent).
        """
        job_id, job_path = await self.unit_property(unit, "Unit", "Job")
        if int(job_id) == 0:
            return ""
        return str(await self._get(str(job_path), "Job", "JobType"))

    async def bus_name_state(self, name: str) -> str:
        """Whether a D-Bus name is "running" (has an owner), "activatable", or "absent"."""
        (owned,) = await self._call_bus("NameHasOwner", "s", [name])
        if owned:
            return "running"
        (names,) = await self._call_bus("ListActivatableNames", "", [])
        return "activatable" if name in names else "absent"

    async def daemon_reload(self) -> None:
        """`systemctl daemon-reload` (used by install, as root)."""
        await self._manager("Reload", "", [])

    async def manager_call(self, member: str, signature: str, body: Iterable[Any]) -> list[Any]:
        """Any other Manager method (install uses EnableUnitFiles and friends)."""
        return await self._manager(member, signature, list(body))

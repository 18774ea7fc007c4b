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
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from dbus_fast import BusType, Message, MessageType, Variant
from dbus_fast.aio import MessageBus
from dbus_fast.errors import DBusError

from dqagent.errors import AccessDeniedError, BusConnectionError, NoSuchUnitError, SystemdError, UnitNameError

SYSTEMD = "org.freedesktop.systemd1"
MANAGER_PATH = "/org/freedesktop/systemd1"
MANAGER = "org.freedesktop.systemd1.Manager"
PROPERTIES = "org.freedesktop.DBus.Properties"
WORKER_TEMPLATE = "dramatiq-worker"
WORKER_PATTERN = f"{WORKER_TEMPLATE}@*.service"
_WORKER_RE = re.compile(rf"{WORKER_TEMPLATE}@([1-9][0-9]{{0,5}})\.service")
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
    if not isinstance(instance, int) or isinstance(instance, bool) or not 1 <= instance <= 999_999:
        raise UnitNameError(f"worker instance must be an integer in 1..999999, got {instance!r}")
    return f"{WORKER_TEMPLATE}@{instance}.service"


def worker_instance(unit: str) -> int | None:
    """The instance number of a worker unit name, or None for names dqagent does not manage."""
    match = _WORKER_RE.fullmatch(unit)
    return int(match.group(1)) if match else None


@dataclass(frozen=True, slots=True)
class UnitState:
    """One worker unit as systemd sees it right now."""

    unit: str
    instance: int
    active_state: ActiveState
    sub_state: str
    main_pid: int
    #: Realtime microseconds since the epoch when the unit last entered `active`, 0 if never.
    active_enter_us: int
    n_restarts: int
    result: str
    #: True while a job (start/stop/restart) is queued for the unit.
    has_job: bool
    #: The pending job's type ("start", "stop", "restart", ...), "" when none; its id, 0 when none.
    #: Who issued it is not known here: the agent compares with the jobs it has in flight itself.
    job_type: str = ""
    job_id: int = 0

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
class JobOutcome:
    """How systemd finished a job: done, canceled, timeout, failed, dependency, skipped."""

    unit: str
    result: str

    @property
    def ok(self) -> bool:
        return self.result == "done"


def _state(value: str) -> ActiveState:
    try:
        return ActiveState(value)
    except ValueError:
        return ActiveState.UNKNOWN


class SystemdClient:
    """A connection to systemd's manager. `connect()` before use, `close()` after.

    `bus_address` is for tests (a container's bus); by default the system bus.
    """

    def __init__(self, bus_address: str | None = None) -> None:
        self._address = bus_address
        self._bus: MessageBus | None = None
        self._jobs: dict[str, asyncio.Future[str]] = {}
        self._early: dict[str, str] = {}
        self._systemd_owner = ""

    async def connect(self) -> None:
        """Connect and subscribe to job signals; raises BusConnectionError."""
        try:
            bus = MessageBus(bus_address=self._address) if self._address else MessageBus(bus_type=BusType.SYSTEM)
            self._bus = await bus.connect()
        except (OSError, DBusError, EOFError) as exc:
            raise BusConnectionError(f"cannot connect to the system bus: {exc}") from None
        self._bus.add_message_handler(self._on_message)
        # Only systemd's own connection may report job results (any peer can send us a signal).
        (self._systemd_owner,) = await self._call_bus("GetNameOwner", "s", [SYSTEMD])
        await self._call_bus("AddMatch", "s", [
            f"type='signal',sender='{SYSTEMD}',interface='{MANAGER}',member='JobRemoved'"])
        await self._manager("Subscribe", "", [])

    def close(self) -> None:
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
        if (msg.message_type is MessageType.SIGNAL and msg.member == "JobRemoved" and msg.interface == MANAGER
                and msg.sender == self._systemd_owner and msg.signature == "uoss"):
            _id, job, _unit, result = msg.body
            future = self._jobs.pop(job, None)
            if future is not None and not future.done():
                future.set_result(result)
            elif future is None:
                # The job may end before StartUnit's reply reaches us: keep the result briefly.
                self._early[job] = result
                if len(self._early) > 1000:
                    self._early.pop(next(iter(self._early)))
        return None

    async def _call(self, destination: str, path: str, interface: str, member: str,
                    signature: str, body: list[Any]) -> list[Any]:
        bus = self._require()
        try:
            reply = await bus.call(Message(destination=destination, path=path, interface=interface,
                                           member=member, signature=signature, body=body))
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
        return await self._call("org.freedesktop.DBus", "/org/freedesktop/DBus", "org.freedesktop.DBus",
                                member, signature, body)

    async def _get_all(self, path: str, interface: str) -> dict[str, Any]:
        (props,) = await self._call(SYSTEMD, path, PROPERTIES, "GetAll", "s", [interface])
        return {k: (v.value if isinstance(v, Variant) else v) for k, v in props.items()}

    async def _run_jobs(self, member: str, units: Sequence[str], timeout_s: float) -> list[JobOutcome]:
        async def one(unit: str) -> JobOutcome:
            loop = asyncio.get_running_loop()
            try:
                (job,) = await self._manager(member, "ss", [unit, "replace"])
            except SystemdError as exc:
                return JobOutcome(unit, f"error: {exc.name}")
            if job in self._early:
                return JobOutcome(unit, self._early.pop(job))
            future: asyncio.Future[str] = loop.create_future()
            self._jobs[job] = future
            try:
                return JobOutcome(unit, await asyncio.wait_for(future, timeout_s))
            except TimeoutError:
                return JobOutcome(unit, "timeout (no JobRemoved)")
            finally:
                self._jobs.pop(job, None)

        return list(await asyncio.gather(*(one(u) for u in units)))

    # -- what the agent uses ---------------------------------------------------------------------

    async def start_units(self, units: Sequence[str], timeout_s: float = 90) -> list[JobOutcome]:
        """Start units concurrently and wait for each job's result."""
        return await self._run_jobs("StartUnit", units, timeout_s)

    async def stop_units(self, units: Sequence[str], timeout_s: float = 600) -> list[JobOutcome]:
        """Stop units concurrently and wait for each job's result (graceful stops may be slow)."""
        return await self._run_jobs("StopUnit", units, timeout_s)

    async def reset_failed(self, unit: str) -> None:
        """Clear a failed state (and start-limit counter) before reusing an instance number."""
        with contextlib.suppress(NoSuchUnitError):
            await self._manager("ResetFailedUnit", "s", [unit])

    async def unit_state(self, unit: str, path: str | None = None, job: tuple[int, str] = (0, "")) -> UnitState:
        """Read one worker unit's properties; `job` is (id, type) from ListUnitsByPatterns when known."""
        instance = worker_instance(unit)
        if instance is None:
            raise UnitNameError(f"not a dqagent worker unit: {unit!r}")
        if path is None:
            (path,) = await self._manager("LoadUnit", "s", [unit])
        u, s = await asyncio.gather(self._get_all(path, f"{SYSTEMD}.Unit"),
                                    self._get_all(path, f"{SYSTEMD}.Service"))
        job_id = int((u.get("Job") or (0, "/"))[0])
        return UnitState(
            unit=unit, instance=instance, active_state=_state(str(u.get("ActiveState", ""))),
            sub_state=str(u.get("SubState", "")), main_pid=int(s.get("MainPID", 0)),
            active_enter_us=int(u.get("ActiveEnterTimestamp", 0)), n_restarts=int(s.get("NRestarts", 0)),
            result=str(s.get("Result", "")), has_job=job_id != 0,
            job_type=job[1] if job_id and job[0] == job_id else "", job_id=job_id,
        )

    async def worker_states(self) -> list[UnitState]:
        """Every loaded worker unit dqagent manages, by instance number."""
        (rows,) = await self._manager("ListUnitsByPatterns", "asas", [[], [WORKER_PATTERN]])
        # Rows are (name, description, load, active, sub, followed, path, job id, job type, job path).
        wanted = [(str(r[0]), str(r[6]), (int(r[7]), str(r[8]))) for r in rows
                  if worker_instance(str(r[0])) is not None]
        states = await asyncio.gather(*(self.unit_state(n, p, j) for n, p, j in wanted), return_exceptions=True)
        out: list[UnitState] = []
        for state in states:
            if isinstance(state, UnitState):
                out.append(state)
            elif not (isinstance(state, SystemdError) and state.name in _VANISHED):
                raise state  # a unit that went away between list and read is skipped; nothing else
        return sorted(out, key=lambda s: s.instance)

    async def unit_property(self, unit: str, interface: str, name: str) -> Any:
        """One property of any unit (read-only; used for the agent's own unit)."""
        (path,) = await self._manager("LoadUnit", "s", [unit])
        (value,) = await self._call(SYSTEMD, path, PROPERTIES, "Get", "ss", [f"{SYSTEMD}.{interface}", name])
        return value.value if isinstance(value, Variant) else value

    async def pending_job_type(self, unit: str = AGENT_UNIT) -> str:
        """The type of the job queued on `unit` ("stop", "restart", ...), or "" if none.

        This is how the agent tells `systemctl stop` (stop the workers) from `systemctl restart`
        (leave them for the next agent).
        """
        job_id, job_path = await self.unit_property(unit, "Unit", "Job")
        if int(job_id) == 0:
            return ""
        (value,) = await self._call(SYSTEMD, job_path, PROPERTIES, "Get", "ss", [f"{SYSTEMD}.Job", "JobType"])
        return str(value.value if isinstance(value, Variant) else value)

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

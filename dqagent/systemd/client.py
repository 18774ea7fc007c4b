"""The only speaker to systemd (`org.freedesktop.systemd1`): `SystemdClient`, over D-Bus with dbus-fast.

systemd is the single source of truth: what the client keeps of a unit is what systemd last said of
it (a read, or a signal), never a guess. The client wires four parts, each in its own module:

- `systemd_bus`: the connection, bounded calls, systemd's bus name followed across `daemon-reexec`,
  and which signals are believed (`SystemdBus.receive`, the entry point of every signal);
- `systemd_follow`: running units' properties followed through PropertiesChanged;
- `systemd_jobs`: start and stop jobs and their outcomes (JobRemoved, ListJobs re-checks);
- `systemd_listing`: listings (named `UnitRow`s) read into `UnitState`s (`dqagent.core.units`, pure).

The names below are re-exported for the modules that import them from here.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Sequence
from typing import Any

from dbus_fast import Message

from dqagent.core.units import (
    AGENT_UNIT,
    WORKER_PATTERN,
    WORKER_TEMPLATE,
    ActiveState,
    JobOutcome,
    Seen,
    UnitState,
    worker_instance,
    worker_unit,
)
from dqagent.errors import NoSuchUnitError
from dqagent.systemd.bus import (
    BUS_DRIVER,
    DEFAULT_CALL_TIMEOUT_S,
    DEFAULT_MAX_PENDING_CALLS,
    MANAGER,
    MANAGER_PATH,
    PROPERTIES,
    SERVICE,
    SYSTEMD,
    UNIT,
    UNIT_PATH,
    SystemdBus,
    unit_from_path,
)
from dqagent.systemd.follow import UnitFollower
from dqagent.systemd.jobs import JOB_RECHECK_S, JobRunner
from dqagent.systemd.listing import UnitReader, UnitRow

__all__ = ["AGENT_UNIT", "BUS_DRIVER", "DEFAULT_CALL_TIMEOUT_S", "DEFAULT_MAX_PENDING_CALLS", "JOB_RECHECK_S",
           "MANAGER", "MANAGER_PATH", "PROPERTIES", "SERVICE", "SYSTEMD", "UNIT", "UNIT_PATH", "WORKER_PATTERN",
           "WORKER_TEMPLATE", "ActiveState", "JobOutcome", "Seen", "SystemdBus", "SystemdClient", "UnitRow",
           "UnitState", "unit_from_path", "worker_instance", "worker_unit"]


class SystemdClient:
    """A connection to systemd's manager. `connect()` before use, `close()` after.

    `bus_address` is for tests (a container's bus); by default the system bus. `bus` replaces the
    connection itself (a test's scripted `SystemdBus`). Calls are bounded as `SystemdBus` says; jobs
    are awaited as `JobRunner` says.
    """

    def __init__(self, bus_address: str | None = None, call_timeout_s: float = DEFAULT_CALL_TIMEOUT_S,
                 max_pending_calls: int = DEFAULT_MAX_PENDING_CALLS, job_recheck_s: float = JOB_RECHECK_S,
                 bus: SystemdBus | None = None) -> None:
        self.bus = bus if bus is not None else SystemdBus(bus_address, call_timeout_s, max_pending_calls)
        self.follower = UnitFollower(self.bus)
        self.jobs = JobRunner(self.bus, self.follower, job_recheck_s)
        self.reader = UnitReader(self.bus, self.follower)
        self.bus.attach(self)

    async def connect(self) -> None:
        """Connect and subscribe to systemd's signals; raises BusConnectionError or SystemdTimeoutError."""
        await self.bus.connect()

    def close(self) -> None:
        self.jobs.close()
        self.bus.close()

    async def wait_disconnected(self) -> None:
        """Returns when the bus connection is lost (the agent then exits for systemd to restart it)."""
        await self.bus.wait_disconnected()

    @property
    def connected(self) -> bool:
        return self.bus.connected

    @property
    def owner_changes(self) -> int:
        """How many times systemd's bus name got a new owner since connect (daemon-reexec), for tests."""
        return self.bus.owner_changes

    def receive(self, msg: Message) -> None:
        """Feed one message as if the bus delivered it (`SystemdBus.receive`: only systemd's own signals count)."""
        self.bus.receive(msg)

    # -- signals, as the bus believed them (SignalSink) -------------------------------------------

    def job_removed(self, job: str, result: str) -> None:
        self.jobs.job_removed(job, result)

    def unit_reloaded(self, unit: str) -> None:
        self.follower.forget(unit)

    def properties_changed(self, unit: str, changed: dict[str, Any], invalidated: list[str]) -> None:
        self.follower.changed(unit, changed, invalidated)

    def owner_changed(self) -> None:
        self.follower.clear()

    async def after_reexec(self) -> None:
        await self.jobs.recheck()

    # -- worker units ----------------------------------------------------------------------------

    async def start_units(self, units: Sequence[str], timeout_s: float = 90,
                          mode: str = "fail") -> list[JobOutcome]:
        """Start units concurrently and wait for each job's result.

        Job mode `fail`: a unit with a conflicting job queued by someone else (an operator's stop or
        restart) is left alone, its outcome's error the D-Bus error
        `org.freedesktop.systemd1.TransactionIsDestructive`, never cancelled as `replace` would.
        """
        return await self.jobs.run("StartUnit", units, timeout_s, mode)

    async def stop_units(self, units: Sequence[str], timeout_s: float = 600,
                         mode: str = "fail") -> list[JobOutcome]:
        """Stop units concurrently and wait for each job's result (graceful stops may be slow).

        Job mode `fail` as for `start_units`: an operator's pending job is never cancelled.
        """
        return await self.jobs.run("StopUnit", units, timeout_s, mode)

    async def reset_failed(self, unit: str) -> None:
        """Clear a failed state (and start-limit counter) before reusing an instance number."""
        with contextlib.suppress(NoSuchUnitError):
            await self.bus.manager("ResetFailedUnit", "s", [unit])

    async def unit_state(self, unit: str, brief: bool = False) -> UnitState:
        """Read one worker unit now; `brief`: a unit in transition or inactive from its row alone (one
        call), as for `worker_states`.

        Like LoadUnit, this loads the unit if needed (an unused instance reads as inactive/dead).
        """
        return await self.reader.unit_state(unit, brief)

    async def started_states(self, units: Sequence[str]) -> list[UnitState]:
        """The units just started, for the start check, in the order given: one ListUnitsByNames for
        all, then MainPID and NRestarts of a running unit (ActiveEnterTimestamp 0: not read) and
        everything of any other. Loads a unit if needed (a vanished one reads as inactive/dead)."""
        return await self.reader.started_states(units)

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
        return await self.reader.worker_states(brief)

    async def worker_memory(self) -> list[int]:
        """MemoryCurrent (bytes) of every running worker, for the guard; workers without memory
        accounting (systemd answers UINT64_MAX, "[not set]") or gone meanwhile are left out."""
        return await self.reader.worker_memory()

    # -- anything else ---------------------------------------------------------------------------

    async def unit_property(self, unit: str, interface: str, name: str) -> Any:
        """One property of any unit (read-only; used for the agent's own unit)."""
        (path,) = await self.bus.manager("LoadUnit", "s", [unit])
        return await self.bus.get(str(path), interface, name)

    async def pending_job_type(self, unit: str = AGENT_UNIT) -> str:
        """The type of the job queued on `unit` ("stop", "restart", ...), or "" if none.

        This is how the agent tells `systemctl stop` (stop the workers) from `systemctl restart`
        (leave them for the next agent).
        """
        job_id, job_path = await self.unit_property(unit, "Unit", "Job")
        if int(job_id) == 0:
            return ""
        return str(await self.bus.get(str(job_path), "Job", "JobType"))

    async def bus_name_state(self, name: str) -> str:
        """Whether a D-Bus name is "running" (has an owner), "activatable", or "absent"."""
        (owned,) = await self.bus.call_bus("NameHasOwner", "s", [name])
        if owned:
            return "running"
        (names,) = await self.bus.call_bus("ListActivatableNames", "", [])
        return "activatable" if name in names else "absent"

    async def daemon_reload(self) -> None:
        """`systemctl daemon-reload` (used by install, as root)."""
        await self.bus.manager("Reload", "", [])

    async def manager_call(self, member: str, signature: str, body: Iterable[Any]) -> list[Any]:
        """Any other Manager method (install uses EnableUnitFiles and friends)."""
        return await self.bus.manager(member, signature, list(body))

"""Worker units listed and read: ListUnitsByPatterns/ListUnitsByNames rows plus a few properties -> UnitState.

One listing, then a few single-property reads per unit (much cheaper for systemd than GetAll), under
the bus's bound on calls in flight; a running unit's followed properties come from `UnitFollower`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any, NamedTuple

from dqagent.core.units import WORKER_PATTERN, ActiveState, UnitState, parse_worker, worker_instance
from dqagent.errors import NoSuchUnitError, SystemdError, UnitNameError
from dqagent.systemd.bus import SystemdBus
from dqagent.systemd.follow import FOLLOWED, UnitFollower

#: Errors that mean the unit was unloaded between ListUnitsByPatterns and reading it.
_VANISHED = frozenset({"org.freedesktop.DBus.Error.UnknownObject", "org.freedesktop.systemd1.NoSuchUnit",
                       "org.freedesktop.DBus.Error.UnknownMethod", "org.freedesktop.DBus.Error.UnknownInterface"})
Props = tuple[tuple[str, str], ...]
#: Unit properties read besides the listing's row: for a running unit only the first four (systemd
#: resets Result and ExecMain* when it starts a unit), for any other unit all six.
_RUNNING_PROPS: Props = (("Service", "MainPID"), ("Unit", "ActiveEnterTimestamp"), ("Service", "NRestarts"),
                         ("Service", "Result"))
_EXIT_PROPS: Props = (("Service", "ExecMainCode"), ("Service", "ExecMainStatus"))
#: The interface of each property a brief read may ask of a running unit.
_RUNNING_PROP_IFACE = {name: iface for iface, name in _RUNNING_PROPS}
#: The start check of a running unit: its PID, and whether systemd restarted it since.
_STARTED_RUNNING_PROPS: Props = (("Service", "MainPID"), ("Service", "NRestarts"))
#: States a brief read takes from the row alone: a unit in transition or inactive (the loop counts it).
_ROW_ONLY = frozenset({ActiveState.ACTIVATING, ActiveState.DEACTIVATING, ActiveState.RELOADING,
                       ActiveState.INACTIVE})


class UnitRow(NamedTuple):
    """One row of ListUnits, ListUnitsByPatterns or ListUnitsByNames (signature `ssssssouso`)."""

    name: str
    description: str
    load_state: str
    active_state: str
    sub_state: str
    followed: str
    path: str
    job_id: int
    job_type: str
    job_path: str

    @classmethod
    def of(cls, row: Sequence[Any]) -> UnitRow:
        """The row as systemd sent it (a list of ten values)."""
        (name, description, load, active, sub, followed, path, job_id, job_type, job_path) = row
        return cls(str(name), str(description), str(load), str(active), str(sub), str(followed), str(path),
                   int(job_id), str(job_type), str(job_path))

    @property
    def active(self) -> ActiveState:
        return ActiveState.of(self.active_state)

    @property
    def running(self) -> bool:
        """A unit whose process runs."""
        return self.active_state == ActiveState.ACTIVE and self.sub_state == "running"


class JobRow(NamedTuple):
    """One row of ListJobs (signature `usssoo`)."""

    job_id: int
    unit: str
    job_type: str
    state: str
    path: str
    unit_path: str

    @classmethod
    def of(cls, row: Sequence[Any]) -> JobRow:
        (job_id, unit, job_type, state, path, unit_path) = row
        return cls(int(job_id), str(unit), str(job_type), str(state), str(path), str(unit_path))


def state_of(row: UnitRow, read: dict[str, Any]) -> UnitState:
    """A UnitState from a row and the properties read (those not read: see `UnitReader.worker_states`)."""
    parsed = parse_worker(row.name)
    assert parsed is not None
    pool, instance = parsed
    # Not read: systemd resets Result to success at every start; NRestarts reads as -1 (unknown).
    props = {"MainPID": 0, "ActiveEnterTimestamp": 0, "NRestarts": -1, "Result": "success" if row.running else "",
             **read}
    return UnitState(
        unit=row.name, instance=instance, active_state=row.active, sub_state=row.sub_state,
        main_pid=int(props["MainPID"]), active_enter_us=int(props["ActiveEnterTimestamp"]),
        n_restarts=int(props["NRestarts"]), result=str(props["Result"]), has_job=row.job_id != 0,
        job_type=row.job_type if row.job_id else "", job_id=row.job_id,
        exec_main_code=int(props.get("ExecMainCode", 0)), exec_main_status=int(props.get("ExecMainStatus", 0)),
        pool=pool,
    )


def _wanted(row: UnitRow, brief: bool, running_props: Props | None) -> Props:
    """The properties a row lacks (see _RUNNING_PROPS); `brief`: fewer of them (see `worker_states`);
    `running_props`: those of a running unit."""
    if row.running:
        return running_props if running_props is not None else _RUNNING_PROPS
    if brief and row.active in _ROW_ONLY and row.sub_state != "auto-restart":
        return ()
    return _RUNNING_PROPS + _EXIT_PROPS


class UnitReader:
    """Reads worker units: listings, then the properties each row lacks."""

    def __init__(self, bus: SystemdBus, follower: UnitFollower) -> None:
        self._bus = bus
        self._follower = follower

    async def list_by_names(self, units: Sequence[str]) -> dict[str, UnitRow]:
        """ListUnitsByNames (loads a unit if needed: an unused instance reads as inactive/dead), by name."""
        (rows,) = await self._bus.manager("ListUnitsByNames", "as", [list(units)])
        return {row.name: row for row in map(UnitRow.of, rows)}

    async def list_workers(self, states: Sequence[str] = ()) -> list[UnitRow]:
        """ListUnitsByPatterns of the worker units dqagent manages, in `states` (all when empty)."""
        (rows,) = await self._bus.manager("ListUnitsByPatterns", "asas", [list(states), [WORKER_PATTERN]])
        return [row for row in map(UnitRow.of, rows) if worker_instance(row.name) is not None]

    async def unit_state(self, unit: str, brief: bool = False) -> UnitState:
        """One worker unit now; `brief` as for `worker_states`. Raises NoSuchUnitError if not loaded."""
        if worker_instance(unit) is None:
            raise UnitNameError(f"not a dqagent worker unit: {unit!r}")
        row = (await self.list_by_names([unit])).get(unit)
        if row is None:
            raise NoSuchUnitError("org.freedesktop.systemd1.NoSuchUnit", f"unit {unit} is not loaded")
        return await self._from_row(row, brief)

    async def started_states(self, units: Sequence[str]) -> list[UnitState]:
        """The units just started, in the order given: MainPID and NRestarts of a running unit, all of
        any other, read now (not from what is followed: a busy systemd holds back change signals,
        and a check must see a crash and restart within PROCESS_STARTUP_DELAY)."""
        if any(worker_instance(u) is None for u in units):
            raise UnitNameError(f"not dqagent worker units: {units!r}")
        by_name = await self.list_by_names(units)
        missing = [u for u in units if u not in by_name]
        if missing:
            raise NoSuchUnitError("org.freedesktop.systemd1.NoSuchUnit", f"unit {missing[0]} is not loaded")
        return list(await asyncio.gather(*(self._from_row(by_name[u], running_props=_STARTED_RUNNING_PROPS,
                                                          live=True) for u in units)))

    async def worker_states(self, brief: Sequence[str] | None = None) -> list[UnitState]:
        """Every loaded worker unit, by instance number (see `SystemdClient.worker_states`)."""
        props = None if brief is None else tuple((_RUNNING_PROP_IFACE[name], name) for name in brief)
        out: list[UnitState] = []
        to_read = []
        for row in await self.list_workers():
            known = self._from_known(row, _wanted(row, brief is not None, props))
            if known is None:
                to_read.append(row)
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
        """MemoryCurrent (bytes) of every running worker; those without memory accounting (systemd
        answers UINT64_MAX, "[not set]") or gone meanwhile are left out."""
        paths = [row.path for row in await self.list_workers(["active"]) if row.sub_state == "running"]
        values = await asyncio.gather(*(self._bus.get(p, "Service", "MemoryCurrent") for p in paths),
                                      return_exceptions=True)
        return [int(v) for v in values if isinstance(v, int) and 0 <= v < 2**64 - 1]

    def _from_known(self, row: UnitRow, wanted: Props) -> UnitState | None:
        """The row's state without a call, if nothing is wanted or a running unit's wanted properties are
        all followed and known; None if something must be read. (No task per unit: a tick over 500
        followed units costs the listing and little else.)"""
        if not wanted:
            return state_of(row, {})
        known = self._follower.known(row.name, [name for _, name in wanted]) if row.running else None
        return None if known is None else state_of(row, known)

    async def _from_row(self, row: UnitRow, brief: bool = False, running_props: Props | None = None,
                        live: bool = False) -> UnitState:
        """A UnitState from a row plus the properties `_wanted` names, followed ones from the
        follower when it knows them (`live`: all read now)."""
        wanted = _wanted(row, brief, running_props)
        known = None if live else self._from_known(row, wanted)
        if known is not None:
            return known
        followed = row.running and not live
        values = await asyncio.gather(*(
            self._follower.read(row.name, row.path, iface, name) if followed and name in FOLLOWED
            else self._bus.get(row.path, iface, name) for iface, name in wanted))
        return state_of(row, dict(zip((name for _, name in wanted), values, strict=True)))

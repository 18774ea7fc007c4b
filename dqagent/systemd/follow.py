"""Worker units' properties followed through systemd's signals, so a tick reads what changed only.

A running unit's MainPID, NRestarts, Result and ActiveEnterTimestamp are read once, then taken from
PropertiesChanged (all EMITS_CHANGE in systemd's dbus-unit.c and dbus-service.c): a tick over 500
running units makes no property call. What is known of a unit is forgotten when its object is
unloaded or loaded anew (UnitRemoved, UnitNew) and all of it when systemd re-executes (signals sent
meanwhile are lost). A read that a signal overtook is not kept.

The units with a job of ours in flight are watched too: what systemd sends during the job is the
job outcome's `Seen`.
"""

from __future__ import annotations

from typing import Any

from dqagent.core.units import Seen, worker_instance
from dqagent.systemd.bus import SystemdBus

#: The Service properties kept for a job's outcome (all EMITS_CHANGE in dbus-service.c).
SEEN_PROPS = frozenset({"MainPID", "NRestarts", "Result"})
#: The properties of a running unit that are read once and then followed.
FOLLOWED = frozenset({*SEEN_PROPS, "ActiveEnterTimestamp"})


class JobWatch:
    """What systemd sent of one unit's Service properties while a job of ours ran on it."""

    def __init__(self) -> None:
        self.values: dict[str, Any] = {}

    def seen(self) -> Seen | None:
        """The job's `Seen`, None if nothing arrived (the caller then reads the unit)."""
        v = self.values
        return None if not v else Seen(int(v.get("MainPID", 0)), int(v.get("NRestarts", -1)), str(v.get("Result", "")))


class UnitFollower:
    """The followed properties of worker units, as last read or signalled; `bus` reads the rest."""

    def __init__(self, bus: SystemdBus) -> None:
        self._bus = bus
        #: Worker units' FOLLOWED properties as last read or signalled.
        self._known: dict[str, dict[str, Any]] = {}
        #: How many signals each unit had: a read overtaken by one is not kept.
        self._signals: dict[str, int] = {}
        #: The unit's watch of the job of ours in flight on it, if any.
        self._watches: dict[str, JobWatch] = {}

    def changed(self, unit: str, changed: dict[str, Any], invalidated: list[str]) -> None:
        """systemd's PropertiesChanged of a unit: follow the worker units' FOLLOWED properties."""
        if worker_instance(unit) is None:
            return
        self._signals[unit] = self._signals.get(unit, 0) + 1
        values = {k: v for k, v in changed.items() if k in FOLLOWED}
        known = self._known.setdefault(unit, {})
        known.update(values)
        for name in invalidated:
            known.pop(name, None)
        watch = self._watches.get(unit)
        if watch is not None:  # a unit with a job of ours in flight
            watch.values.update((k, v) for k, v in values.items() if k in SEEN_PROPS)

    def forget(self, unit: str) -> None:
        """The unit's object was unloaded or loaded anew: nothing known of it holds."""
        if self._known.pop(unit, None) is not None or unit in self._signals:
            self._signals[unit] = self._signals.get(unit, 0) + 1  # a read under way is not kept either

    def clear(self) -> None:
        """systemd re-executed: signals sent while it was away are lost."""
        self._known.clear()

    def known(self, unit: str, names: list[str]) -> dict[str, Any] | None:
        """`names` of `unit` as followed, None unless every one of them is known."""
        known = self._known.get(unit)
        if known is None or any(name not in known for name in names):
            return None
        return {name: known[name] for name in names}

    async def read(self, unit: str, path: str, iface: str, name: str) -> Any:
        """A FOLLOWED property of a running unit: as last read or signalled, else read (and kept)."""
        known = self._known.get(unit)
        if known is not None and name in known:
            return known[name]
        signals, epoch = self._signals.get(unit, 0), self._bus.owner_changes
        value = await self._bus.get(path, iface, name)
        if self._signals.get(unit, 0) == signals and self._bus.owner_changes == epoch:  # no signal overtook it
            self._known.setdefault(unit, {})[name] = value
        return value

    def watch(self, unit: str) -> JobWatch:
        """Collect what systemd sends of `unit` from now on (a job of ours is about to be queued)."""
        mine = JobWatch()
        self._watches[unit] = mine
        return mine

    def unwatch(self, unit: str, mine: JobWatch) -> bool:
        """End `mine`; False if another job on the unit took the watch meanwhile (its values are unknown)."""
        if self._watches.get(unit) is mine:
            del self._watches[unit]
            return True
        return False

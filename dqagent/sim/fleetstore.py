"""The fleet simulator's store: fleet records in memory, expiring on the simulation's clock."""

from __future__ import annotations

import dataclasses

from dqagent.core.fleet import FleetView, Member
from dqagent.errors import BrokerError


class MemoryFleetStore:
    """An in-memory `FleetStore` with Redis's behaviour: records expire after their TTL on one clock. The fleet
    simulator runs many hosts on one; the unit tests of fleet mode use it too.

    Several coordinators may share one (hosts of one fleet); `error` makes every call fail (a partition).
    """

    def __init__(self, fleet: str = "f") -> None:
        self.fleet = fleet
        self.now_ms = 0
        self.records: dict[str, Member] = {}
        self.error: BrokerError | None = None

    def live(self) -> tuple[Member, ...]:
        return tuple(sorted((m for m in self.records.values() if self.now_ms < m.at_ms + m.ttl_ms),
                            key=lambda m: m.host))

    async def sync(self, me: Member | None) -> FleetView:
        if self.error is not None:
            raise self.error
        if me is not None:
            self.records[me.host] = dataclasses.replace(me, at_ms=self.now_ms)
        return FleetView(self.fleet, me.host if me else "", self.live(), self.now_ms)

    async def leave(self, host: str) -> None:
        if self.error is not None:
            raise self.error
        self.records.pop(host, None)

    async def close(self) -> None:
        pass

"""In-memory stand-ins for systemd (`FakeUnits`), the broker (`FakeDemandProbe`) and sd_notify
(`RecordingNotifier`), for unit tests of the loop only.

`FakeUnits` models the states the agent meets on a real host (systemd 252), not only running/failed:
activating (incl. auto-restart after a crash), deactivating while a stop drains, failed (incl.
start-limit-hit, and Result=timeout after a TimeoutStopSec SIGKILL), pending jobs (the agent's and
an operator's), and starts that fail. The real implementations have their own integration tests.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, replace

from dqagent.core.demand import Demand, QueueDemand
from dqagent.core.units import ActiveState, JobOutcome, Seen, UnitState, parse_worker, worker_unit
from dqagent.errors import BrokerError, systemd_error
from dqagent.settings.parsers import DEFAULT_POOL

#: A fake unit's key: its instance number (the default pool), or (pool, number).
Key = int | tuple[str, int]


def _split(key: Key) -> tuple[str, int]:
    return (DEFAULT_POOL, key) if isinstance(key, int) else key


def _key(unit: str) -> Key | None:
    parsed = parse_worker(unit)
    if parsed is None:
        return None
    return parsed[1] if parsed[0] == DEFAULT_POOL else parsed


@dataclass
class FakeUnit:
    active: ActiveState = ActiveState.ACTIVE
    sub: str = "running"
    result: str = "success"
    job: str = ""
    pid: int = 0
    n_restarts: int = 0
    active_enter_us: int = 1
    #: MemoryCurrent in bytes; None: no memory accounting (systemd shows "[not set]").
    memory: int | None = None


class FakeUnits:
    """Worker units by instance number (the default pool), or by (pool, number) for another pool.

    `broken` instances crash right after their start (auto-restart, systemd's Restart=);
    `flapping` instances crash and are already running again at the start check (NRestarts 1);
    `ignore_term` instances are SIGKILLed at TimeoutStopSec when stopped (failed, Result=timeout);
    while `drain` is an unset event, stops stay in deactivating (a worker finishing its tasks).
    """

    def __init__(self, running: Sequence[Key] = (), broken: Sequence[Key] = ()) -> None:
        self.units: dict[Key, FakeUnit] = {}
        for n in running:
            self.run(n)
        self.broken = set(broken)
        self.flapping: set[Key] = set()
        self.ignore_term: set[Key] = set()
        self.drain: asyncio.Event | None = None
        self.calls: list[tuple[str, tuple[str, ...]]] = []
        #: The agent's own unit's pending job ("stop", "restart", "").
        self.job = ""
        #: When set, start/stop/reset requests are refused with this D-Bus error name.
        self.refuse = ""
        self._next_job = 100
        #: Like the real client, carry the Service properties systemd sent before JobRemoved in each
        #: outcome (off: the outcome has none, as when no PropertiesChanged arrived, and the agent reads).
        self.signals = False

    # -- what happens to units outside the agent ---------------------------------------------------

    def run(self, n: Key) -> None:
        pool, number = _split(n)
        self.units[n] = FakeUnit(pid=(1000 if pool == DEFAULT_POOL else 5000) + number)

    def crash(self, n: Key, result: str = "exit-code") -> None:
        """The process died; systemd waits RestartSec (activating/auto-restart) before restarting it."""
        u = self.units[n]
        u.active, u.sub, u.result, u.pid = ActiveState.ACTIVATING, "auto-restart", result, 0
        u.n_restarts += 1

    def fail(self, n: Key, result: str = "start-limit-hit") -> None:
        self.units[n] = FakeUnit(ActiveState.FAILED, "failed", result, n_restarts=5)

    def operator_job(self, n: Key, job: str, active: ActiveState = ActiveState.DEACTIVATING,
                     sub: str = "stop-sigterm") -> None:
        """E.g. `systemctl restart` with a slow ExecStop: deactivating, job restart."""
        u = self.units.setdefault(n, FakeUnit())
        u.active, u.sub, u.job = active, sub, job

    # -- UnitManager -------------------------------------------------------------------------------

    def _state(self, key: Key, u: FakeUnit) -> UnitState:
        pool, n = _split(key)
        return UnitState(worker_unit(n, pool), n, u.active, u.sub, u.pid, u.active_enter_us, u.n_restarts, u.result,
                         bool(u.job), u.job, 7 if u.job else 0, pool=pool)

    async def worker_states(self, brief: Sequence[str] | None = None) -> list[UnitState]:
        """`brief` reads of the real client omit figures the loop does not use: every figure here is exact."""
        return [self._state(n, u) for n, u in sorted(self.units.items(), key=lambda item: _split(item[0]))]

    async def unit_state(self, unit: str, brief: bool = False) -> UnitState:
        n = _key(unit)
        assert n is not None
        return self._state(n, self.units.get(n, FakeUnit(ActiveState.INACTIVE, "dead")))

    async def started_states(self, units: Sequence[str]) -> list[UnitState]:
        return [await self.unit_state(u) for u in units]

    async def start_units(self, units: Sequence[str], timeout_s: float = 90) -> list[JobOutcome]:
        self.calls.append(("start", tuple(units)))
        if self.refuse:
            return [JobOutcome(u, error=systemd_error(self.refuse, "refused")) for u in units]
        for u in units:
            n = _key(u)
            assert n is not None
            self.run(n)
            if n in self.broken:
                self.crash(n)
            elif n in self.flapping:
                self.units[n].n_restarts = 1
        return [JobOutcome(u, "done", self._seen(u)) for u in units]

    def _seen(self, unit: str) -> Seen | None:
        n = _key(unit)
        assert n is not None
        u = self.units.get(n)
        if not self.signals:
            return None
        return Seen(0, 0, "success") if u is None else Seen(u.pid, u.n_restarts, u.result)

    async def stop_units(self, units: Sequence[str], timeout_s: float = 600) -> list[JobOutcome]:
        self.calls.append(("stop", tuple(units)))
        if self.refuse:
            return [JobOutcome(u, error=systemd_error(self.refuse, "refused")) for u in units]
        numbers = [_key(u) for u in units]
        for n in numbers:
            assert n is not None
            if n in self.units:
                u = self.units[n]
                if u.sub == "auto-restart":
                    del self.units[n]  # stopping a unit in RestartSec: inactive at once
                    continue
                u.active, u.sub, u.job = ActiveState.DEACTIVATING, "stop-sigterm", "stop"
        if self.drain is not None:
            await self.drain.wait()
        for n in numbers:
            assert n is not None
            if n in self.units:
                if n in self.ignore_term:
                    self.units[n] = FakeUnit(ActiveState.FAILED, "failed", "timeout")
                else:
                    del self.units[n]
        return [JobOutcome(u, "done", self._seen(u)) for u in units]

    async def reset_failed(self, unit: str) -> None:
        self.calls.append(("reset", (unit,)))
        if self.refuse:
            raise systemd_error(self.refuse, "refused")
        n = _key(unit)
        if n is not None and n in self.units and self.units[n].active is ActiveState.FAILED:
            del self.units[n]

    async def pending_job_type(self, unit: str = "dqagent.service") -> str:
        return self.job

    async def worker_memory(self) -> list[int]:
        """MemoryCurrent of running units that have accounting (the guard's read)."""
        return [u.memory for u in self.units.values()
                if u.active is ActiveState.ACTIVE and u.sub == "running" and u.memory is not None]

    async def wait_disconnected(self) -> None:
        await asyncio.Event().wait()


class FakeDemandProbe:
    """An in-memory `DemandProbe` for tests of the agent loop.

    Set `demand` to what the next `fetch_demand()` returns and `error` to a `BrokerError` that every
    call raises until it is cleared. `recover_orphans()` models Dramatiq's maintenance: each queue's
    orphans become ready (outstanding is unchanged, as orphans are in it already).
    """

    def __init__(self, demand: Demand | None = None) -> None:
        self.demand = demand if demand is not None else Demand(())
        self.error: BrokerError | None = None
        self.fetch_calls = 0
        self.recover_calls = 0
        self.closed = False

    def set_queue(self, queue: str, *, ready: int = 0, outstanding: int | None = None, delayed: int = 0,
                  dead: int = 0, orphaned: int = 0, oldest_age_s: float | None = None) -> None:
        """Replace (or add) one queue's figures; `outstanding` defaults to `ready` (nothing in flight)."""
        q = QueueDemand(queue=queue, ready=ready, outstanding=ready if outstanding is None else outstanding,
                        delayed=delayed, dead=dead, orphaned=orphaned, oldest_age_s=oldest_age_s)
        others = tuple(x for x in self.demand.queues if x.queue != queue)
        self.demand = Demand((*others, q))

    async def fetch_demand(self) -> Demand:
        self.fetch_calls += 1
        if self.error is not None:
            raise self.error
        return self.demand

    async def recover_orphans(self) -> int:
        self.recover_calls += 1
        if self.error is not None:
            raise self.error
        recovered = self.demand.orphaned
        self.demand = Demand(tuple(replace(q, ready=q.ready + q.orphaned, orphaned=0)
                                   for q in self.demand.queues))
        return recovered

    async def close(self) -> None:
        self.closed = True


class Clock:
    """A clock the test moves: `now` seconds (monotonic or wall-clock, as the agent is given it)."""

    def __init__(self, now: float = 0.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class RecordingNotifier:
    """In-memory notifier for tests of the loop."""

    def __init__(self) -> None:
        self.sent: list[str] = []

    def ready(self) -> None:
        self.sent.append("READY=1")

    def reloading(self) -> None:
        self.sent.append("RELOADING=1")

    def status(self, line: str) -> None:
        self.sent.append(f"STATUS={line}")

    def watchdog(self) -> None:
        self.sent.append("WATCHDOG=1")

    def stopping(self) -> None:
        self.sent.append("STOPPING=1")

    def extend_timeout(self, seconds: float) -> None:
        self.sent.append(f"EXTEND_TIMEOUT_USEC={int(seconds * 1_000_000)}")

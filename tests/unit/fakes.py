"""An in-memory stand-in for systemd, for unit tests of the loop only (the broker's is `FakeDemandProbe`).

The real implementations have their own integration tests in the bench.
"""

from __future__ import annotations

from collections.abc import Sequence

from dqagent.errors import SystemdError
from dqagent.systemd import ActiveState, JobOutcome, UnitState, worker_instance


class FakeUnits:
    """Workers as a dict instance -> running?; `broken` instances fail to start."""

    def __init__(self, running: Sequence[int] = (), broken: Sequence[int] = ()) -> None:
        self.units: dict[int, str] = {n: "running" for n in running}
        self.broken = set(broken)
        self.calls: list[tuple[str, tuple[str, ...]]] = []
        self.job = ""
        #: When set, start/stop/reset requests are refused with this D-Bus error name.
        self.refuse = ""

    async def worker_states(self) -> list[UnitState]:
        out = []
        for n, state in sorted(self.units.items()):
            active = ActiveState.ACTIVE if state == "running" else ActiveState.FAILED
            out.append(UnitState(f"dramatiq-worker@{n}.service", n, active, state if state == "running" else "failed",
                                 1000 + n if state == "running" else 0, 1, 0,
                                 "success" if state == "running" else "exit-code", False))
        return out

    async def start_units(self, units: Sequence[str], timeout_s: float = 90) -> list[JobOutcome]:
        self.calls.append(("start", tuple(units)))
        for u in units:
            n = worker_instance(u)
            assert n is not None
            self.units[n] = "failed" if n in self.broken else "running"
        return [JobOutcome(u, "done") for u in units]

    async def stop_units(self, units: Sequence[str], timeout_s: float = 600) -> list[JobOutcome]:
        self.calls.append(("stop", tuple(units)))
        if self.refuse:
            return [JobOutcome(u, f"error: {self.refuse}") for u in units]
        for u in units:
            n = worker_instance(u)
            assert n is not None
            self.units.pop(n, None)
        return [JobOutcome(u, "done") for u in units]

    async def reset_failed(self, unit: str) -> None:
        self.calls.append(("reset", (unit,)))
        if self.refuse:
            raise SystemdError(self.refuse, "refused")
        n = worker_instance(unit)
        if n is not None and self.units.get(n) == "failed":
            del self.units[n]

    async def pending_job_type(self, unit: str = "dqagent.service") -> str:
        return self.job

    async def wait_disconnected(self) -> None:
        import asyncio

        await asyncio.Event().wait()

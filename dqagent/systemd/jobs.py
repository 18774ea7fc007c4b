"""Start and stop jobs queued with systemd, and their outcomes (JobRemoved).

Jobs are awaited through `JobRemoved` (subscribed before the first StartUnit/StopUnit), and a `done`
job is not taken as proof of health: callers re-read the unit. A JobRemoved lost (while systemd
re-executed, or dropped) is caught by re-checking the awaited jobs against `ListJobs` every
JOB_RECHECK_S, and at once after a re-exec: a job systemd no longer lists is resolved from its unit's
state instead of waiting out its timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

from dqagent.core.units import ActiveState, JobOutcome
from dqagent.errors import BusConnectionError, JobWaitTimeoutError, SystemdError
from dqagent.systemd.bus import SystemdBus
from dqagent.systemd.follow import UnitFollower
from dqagent.systemd.listing import JobRow, UnitRow

log = logging.getLogger(__name__)

#: How often a job still awaited is checked against `ListJobs` (a lost JobRemoved costs at most this).
JOB_RECHECK_S = 15.0
#: JobRemoved results kept for jobs not awaited yet (they ended before StartUnit's reply reached us).
_EARLY_KEPT = 1000


@dataclass(slots=True)
class _Job:
    """A job we queued and still await: its JobRemoved result lands in `future`."""

    unit: str
    verb: str
    future: asyncio.Future[str]
    #: When a ListJobs re-check last saw systemd still holding the job (loop time), -inf if never.
    listed_at: float = -math.inf


class JobRunner:
    """Queues jobs and awaits their ends; `job_removed` is fed JobRemoved by the client."""

    def __init__(self, bus: SystemdBus, follower: UnitFollower, recheck_s: float = JOB_RECHECK_S) -> None:
        self._bus = bus
        self._follower = follower
        self._recheck_s = recheck_s
        self._jobs: dict[str, _Job] = {}
        self._early: dict[str, str] = {}
        self._recheck: asyncio.Task[None] | None = None
        self._recheck_at = -math.inf

    def close(self) -> None:
        if self._recheck is not None:
            self._recheck.cancel()

    async def run(self, member: str, units: Sequence[str], timeout_s: float, mode: str) -> list[JobOutcome]:
        """`member` (StartUnit, StopUnit) for every unit at once; each one's outcome, in order."""
        return list(await asyncio.gather(*(self._one(member, u, timeout_s, mode) for u in units)))

    async def _one(self, member: str, unit: str, timeout_s: float, mode: str) -> JobOutcome:
        mine = self._follower.watch(unit)  # only what systemd sends from now on describes this job
        try:
            try:
                (job,) = await self._bus.manager(member, "ss", [unit, mode])
            except SystemdError as exc:
                return JobOutcome(unit, error=exc)
            result = await self.await_job(str(job), unit, member, timeout_s)
        finally:
            # Another job on the unit meanwhile took the watch: then this one's values are unknown.
            still_mine = self._follower.unwatch(unit, mine)
        seen = mine.seen() if still_mine else None
        if result is None:
            return JobOutcome(unit, seen=seen, error=JobWaitTimeoutError(
                f"{member} of {unit}: no JobRemoved within {timeout_s:g}s of systemd last listing the job"))
        return JobOutcome(unit, result, seen)

    async def await_job(self, job: str, unit: str, verb: str, timeout_s: float) -> str | None:
        """The job's result from JobRemoved, None if the wait timed out; re-checked every JOB_RECHECK_S
        in case a signal was lost.

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
                    return None
                with contextlib.suppress(TimeoutError):
                    return await asyncio.wait_for(asyncio.shield(pending.future), min(remaining, self._recheck_s))
                await self._recheck_shared()
            return pending.future.result()
        finally:
            self._jobs.pop(job, None)

    def job_removed(self, job: str, result: str) -> None:
        """systemd's JobRemoved (believed by the bus): the awaited job ends, or its result is kept."""
        pending = self._jobs.pop(job, None)
        if pending is None:
            # The job may end before StartUnit's reply reaches us: keep the result briefly.
            self._early[job] = result
            if len(self._early) > _EARLY_KEPT:
                self._early.pop(next(iter(self._early)))
        elif not pending.future.done():
            pending.future.set_result(result)

    async def recheck(self) -> None:
        """Resolve awaited jobs that no longer exist (their JobRemoved was lost), from the unit's state.

        A job still listed is left alone: its JobRemoved will come. A JobRemoved sent before the
        ListJobs reply is processed before it, so a finished job is never resolved twice.
        """
        if not self._jobs:
            return
        (rows,) = await self._bus.manager("ListJobs", "", [])
        alive = {row.path for row in map(JobRow.of, rows)}
        now = asyncio.get_running_loop().time()
        for job in alive & self._jobs.keys():
            self._jobs[job].listed_at = now
        gone = {job: p for job, p in self._jobs.items() if job not in alive and not p.future.done()}
        if not gone:
            return
        (listed,) = await self._bus.manager("ListUnitsByNames", "as", [sorted({p.unit for p in gone.values()})])
        active = {row.name: row.active for row in map(UnitRow.of, listed)}
        for job, p in gone.items():
            state = active.get(p.unit, ActiveState.INACTIVE)
            if p.verb == "StartUnit":
                ok = state in (ActiveState.ACTIVE, ActiveState.RELOADING)
            else:
                ok = state in (ActiveState.INACTIVE, ActiveState.FAILED)
            log.debug("job %s for %s ended unseen; %s is %s", job, p.unit, p.unit, state)
            self.job_removed(job, "done" if ok else "failed")

    async def _recheck_shared(self) -> None:
        """One `recheck` for all the jobs waiting around then (500 stops make one ListJobs)."""
        loop = asyncio.get_running_loop()
        if loop.time() - self._recheck_at >= self._recheck_s / 2:
            self._recheck_at = loop.time()
            self._recheck = loop.create_task(self.recheck())
        if self._recheck is not None:
            with contextlib.suppress(SystemdError, BusConnectionError):
                await asyncio.shield(self._recheck)

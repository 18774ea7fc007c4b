"""The agent's own jobs in flight: start and stop jobs issued as background tasks, tracked across ticks.

The loop never awaits a job: `JobTable.start()`/`stop()` record the intent at once (the reconciler
counts it) and return; a task per start batch (StartUnit, then the PROCESS_STARTUP_DELAY check) or
per stopped unit (StopUnit, which waits out a draining worker) reports its outcome when systemd
finishes. This table and the crash-loop backoff are the agent's only memory between ticks.

A start passes its check when the unit is active/running and systemd has not restarted it since
(NRestarts no higher than before). A start that fails it, or one that reuses a failed unit's number,
backs off further starts (5 s doubling to 300 s, see `dqagent.core.reconciler.Backoff`); a unit that
failed its check is stopped, so systemd's own `Restart=` does not turn the crash loop back into a
tight one. A unit the agent stopped that ends
failed (a TimeoutStopSec SIGKILL: Result=timeout) is a WARNING `worker_stop_timeout`, and it is
reset-failed so it does not stay listed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Protocol

from dqagent.core import startlimit
from dqagent.core.reconciler import Backoff, Intent, Plan, census, reconcile
from dqagent.core.units import ActiveState, JobOutcome, UnitState, of_pool, worker_unit
from dqagent.errors import BusConnectionError, DqAgentError, SystemdError
from dqagent.host.reports import by_instance, read_loads
from dqagent.report.logs import event
from dqagent.report.reporter import Reporter
from dqagent.settings.config import Settings
from dqagent.settings.parsers import DEFAULT_POOL

__all__ = ["JobTable", "Outcome", "ScaleReport", "UnitManager", "restart_baseline", "scale_by", "stop_timeout_s"]

log = logging.getLogger(__name__)

#: Starts whose durations `JobTable.start_s` keeps.
START_SAMPLES = 5


class UnitManager(Protocol):
    """What the agent needs from `dqagent.systemd.client.SystemdClient` (a fake implements it in unit tests)."""

    async def worker_states(self, brief: Sequence[str] | None = ...) -> list[UnitState]: ...
    async def unit_state(self, unit: str, brief: bool = ...) -> UnitState: ...
    async def started_states(self, units: Sequence[str]) -> list[UnitState]: ...
    async def start_units(self, units: Sequence[str], timeout_s: float = ...) -> list[JobOutcome]: ...
    async def stop_units(self, units: Sequence[str], timeout_s: float = ...) -> list[JobOutcome]: ...
    async def reset_failed(self, unit: str) -> None: ...
    async def pending_job_type(self, unit: str = ...) -> str: ...
    async def wait_disconnected(self) -> None: ...


@dataclass(frozen=True, slots=True)
class Outcome:
    """How one of the agent's jobs ended, one line per unit (what `scale-up/-down` print)."""

    unit: str
    intent: Intent
    ok: bool
    line: str
    #: The failure was polkit (or the bus) refusing the caller, not the unit failing.
    refused: bool = False


@dataclass(frozen=True, slots=True)
class ScaleReport:
    """What a manual `scale-up`/`scale-down` did, one line per unit."""

    current: int
    wanted: int
    target: int
    lines: tuple[str, ...]
    failed: int
    #: Some failure was polkit (or the bus) refusing the caller, not the unit failing.
    refused: bool = False

    @property
    def clamped(self) -> bool:
        return self.target != self.wanted


async def scale_by(units: UnitManager, settings: Settings, delta: int, pool: str = DEFAULT_POOL) -> ScaleReport:
    """Add (or remove, delta < 0) workers of `pool` now, within its [MIN, MAX] (`settings`: the pool's); the
    agent continues from there.

    Counts and picks units by the reconciler's rules: the pool is running + coming, and a scale-down
    stops only settled units (never one with an operator's job), the least busy first by the workers'
    reports. Waits for every job it issues.
    """
    states = of_pool(await units.worker_states(brief=()), pool)  # the rows suffice; the checks read again
    current = census(states, {}).pool
    wanted = current + delta
    target = settings.clamp(wanted)
    plan = reconcile(states, target, min_processes=settings.min_processes, max_processes=settings.max_processes,
                     in_flight={}, backoff=Backoff(), now_s=0.0, loads=by_instance(read_loads(states), states))
    jobs = JobTable(units, Reporter(), pool=pool)
    jobs.start(plan.start, plan.reset, settings.process_startup_delay_s, restart_baseline(states, plan),
               stop_timeout_s(settings))
    jobs.stop(plan.stop, stop_timeout_s(settings))
    await jobs.wait()
    failures = [o for o in jobs.outcomes if not o.ok]
    # In the plan's order (starts lowest first, stops highest first): the checks end in any order.
    rank = {worker_unit(n, pool): i for i, n in enumerate((*plan.start, *plan.stop))}
    ordered = sorted(jobs.outcomes, key=lambda o: rank.get(o.unit, len(rank)))
    return ScaleReport(current, wanted, target, tuple(o.line for o in ordered), len(failures),
                       refused=any(o.refused for o in failures))


def restart_baseline(states: Sequence[UnitState], plan: Plan) -> dict[int, int]:
    """NRestarts of each unit about to be started (0 after a reset): more at the check means a crash.

    Not read (-1, a brief read of an inactive unit) counts as 0: systemd flushes NRestarts when it
    starts a unit that ended without an automatic restart (service.c, `flush_n_restarts`).
    """
    return {s.instance: max(s.n_restarts, 0) for s in states
            if s.instance in plan.start and s.instance not in plan.reset}


def stop_timeout_s(settings: Settings) -> float:
    """How long to wait for a stop job: systemd's own SIGKILL comes at GRACEFUL_SHUTDOWN_TIMEOUT."""
    return settings.graceful_shutdown_timeout_s + 60



class _Batched:
    """Reads of just-started units, batched: the units whose jobs end while a read is under way are
    read together by the next one (one ListUnitsByNames each), so 500 start checks cost systemd a
    few dozen listings rather than 500, with no timer added to any check."""

    def __init__(self, read: Callable[[Sequence[str]], Awaitable[list[UnitState]]]) -> None:
        self._read = read
        self._waiting: dict[str, list[asyncio.Future[UnitState]]] = {}
        self._reader: asyncio.Task[None] | None = None

    async def read(self, unit: str) -> UnitState:
        future: asyncio.Future[UnitState] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(unit, []).append(future)
        if self._reader is None or self._reader.done():
            self._reader = asyncio.create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        while self._waiting:
            batch, self._waiting = self._waiting, {}
            try:
                states = await self._read(list(batch))
            except Exception as exc:  # handed to each caller, who reports it
                for futures in batch.values():
                    for f in futures:
                        if not f.done():
                            f.set_exception(exc)
                continue
            for state, futures in zip(states, batch.values(), strict=True):
                for f in futures:
                    if not f.done():
                        f.set_result(state)


class JobTable:
    """One pool's jobs in flight, by instance number; outcomes accumulate in `outcomes`."""

    def __init__(self, units: UnitManager, reporter: Reporter,
                 clock: Callable[[], float] = time.monotonic, pool: str = DEFAULT_POOL) -> None:
        #: The pool whose units these numbers name (`dqagent.core.units.worker_unit`).
        self.pool = pool
        self._units = units
        self._reporter = reporter
        self._clock = clock
        self._flight: dict[int, Intent] = {}
        self._tasks: dict[asyncio.Task[None], Intent] = {}
        self.backoff = Backoff()
        #: When the agent started each number within systemd's start-limit interval (`dqagent.core.startlimit`).
        self.starts: startlimit.Starts = {}
        self.outcomes: list[Outcome] = []
        self._checker = _Batched(units.started_states)
        #: How long the last few successful StartUnit jobs took (seconds): the schedule's pre-warm lead.
        self._start_took: deque[float] = deque(maxlen=START_SAMPLES)

    @property
    def in_flight(self) -> Mapping[int, Intent]:
        """A read-only view of what the agent is doing, for the reconciler."""
        return MappingProxyType(self._flight)

    @property
    def start_s(self) -> float:
        """The slowest of the last few successful starts (StartUnit until its job ended); 0 before any."""
        return max(self._start_took, default=0.0)

    @property
    def busy(self) -> bool:
        return bool(self._tasks)

    def start(self, numbers: Sequence[int], reset: Sequence[int], startup_delay_s: float,
              baseline: Mapping[int, int], stop_timeout_s: float) -> None:
        """Start `numbers` (resetting the failed ones in `reset` first) in the background.

        `baseline` is each listed unit's NRestarts before the start: more restarts at the check
        means it crashed in between. A unit that fails its check is stopped within `stop_timeout_s`.
        """
        if not numbers:
            return
        if reset:
            # A failed unit is a crash systemd's Restart= could not recover from: restart it, but back off.
            self._failed(f"reusing failed unit(s) {', '.join(self._unit(n) for n in reset)}")
        self._flight.update(dict.fromkeys(numbers, Intent.START))
        self.starts = startlimit.record(self.starts, numbers, self._clock())
        self._track(self._start(tuple(numbers), frozenset(reset), startup_delay_s, dict(baseline), stop_timeout_s),
                    Intent.START)

    def stop(self, numbers: Sequence[int], timeout_s: float, quiet: bool = False) -> None:
        """Stop each of `numbers` in its own background task (a draining worker delays no one else)."""
        for n in numbers:
            self._flight[n] = Intent.STOP
            self._track(self._stop(n, timeout_s, quiet), Intent.STOP)

    def restart(self, numbers: Sequence[int], startup_delay_s: float, stop_timeout_s: float) -> None:
        """Restart each of `numbers` (hung workers) in its own background task: stop it, then start the same
        number with the usual start check; a failed check backs off further starts like any failed start."""
        for n in numbers:
            self._flight[n] = Intent.RESTART
            self._track(self._restart(n, startup_delay_s, stop_timeout_s), Intent.RESTART)

    def _track(self, coro: Coroutine[Any, Any, None], intent: Intent) -> None:
        task = asyncio.create_task(coro)
        self._tasks[task] = intent
        task.add_done_callback(self._forget)

    def _forget(self, task: asyncio.Task[None]) -> None:
        self._tasks.pop(task, None)

    async def wait(self, intent: Intent | None = None) -> None:
        """Until every job in flight (of `intent`, if given) has ended: for shutdown and the CLI."""
        while pending := [t for t, i in self._tasks.items() if not t.done() and intent in (None, i)]:
            await asyncio.gather(*pending, return_exceptions=True)

    def cancel(self) -> None:
        """Forget our jobs (their systemd jobs run on): the agent is exiting."""
        for task in list(self._tasks):
            task.cancel()

    # -- the tasks -------------------------------------------------------------------------------

    async def _start(self, numbers: tuple[int, ...], reset: frozenset[int], delay_s: float,
                     baseline: dict[int, int], stop_timeout_s: float) -> None:
        """Each unit is checked as soon as its own job ends (as `systemctl start` returns per job), so
        the checks of early units overlap the later starts instead of all following the last one."""
        ends = await asyncio.gather(*(self._start_one(n, n in reset, delay_s, baseline.get(n, 0), stop_timeout_s)
                                      for n in numbers))
        lost = [(n, end) for n, end in zip(numbers, ends, strict=True) if isinstance(end, DqAgentError)]
        if lost:
            log.warning("start of %s not confirmed: %s", ", ".join(self._unit(n) for n, _ in lost), lost[0][1],
                        extra=event("start_unconfirmed", error=str(lost[0][1])))
            return
        if any(ends):
            self._failed(f"{sum(1 for end in ends if end is True)} failed start(s)")
        else:
            self.backoff = self.backoff.after_success(self._clock())

    async def _start_one(self, n: int, reset: bool, delay_s: float, baseline: int,
                         stop_timeout_s: float) -> bool | DqAgentError:
        """Start one unit and check it: True if it failed its check, the error if systemd was lost."""
        unit = self._unit(n)
        try:
            began = self._clock()
            outcome = await self._reset_then_start(unit, reset)
            if outcome.ok:
                self._start_took.append(self._clock() - began)
            seen = outcome.seen
            if delay_s > 0 and outcome.ok:
                await asyncio.sleep(delay_s)
                seen = None
            if outcome.ok and seen is not None and seen.main_pid > 0:
                # No delay to wait out: the job's end is the check. Type=exec's job is done once the
                # process runs, and systemd sent its MainPID and NRestarts just before JobRemoved.
                state = UnitState(unit, n, ActiveState.ACTIVE, "running", seen.main_pid, 0, seen.n_restarts,
                                  "success", has_job=False, pool=self.pool)
            else:
                state = await self._checker.read(unit)
            return self._judge(n, unit, outcome, state, baseline, stop_timeout_s)
        except (BusConnectionError, SystemdError) as exc:
            return exc
        finally:
            if self._flight.get(n) is Intent.START:
                del self._flight[n]

    async def _reset_then_start(self, unit: str, reset: bool) -> JobOutcome:
        """StartUnit's outcome; a reset that systemd refused or failed stands for it (no start is tried)."""
        if reset:
            try:
                await self._units.reset_failed(unit)
            except SystemdError as exc:
                return JobOutcome(unit, error=exc)
        (outcome,) = await self._units.start_units([unit])
        return outcome

    def _failed(self, why: str) -> None:
        self.backoff = self.backoff.after_failure(self._clock())
        wait_s = self.backoff.remaining_s(self._clock())
        log.warning("backing off starts for %.0fs after %s", wait_s, why,
                    extra=event("start_backoff", backoff_s=round(wait_s), failures=self.backoff.failures))

    def _judge(self, n: int, unit: str, outcome: JobOutcome, state: UnitState, baseline: int,
               stop_timeout_s: float) -> bool:
        """Log and record one started unit; True if it failed its check."""
        result = outcome.text
        if outcome.ok and state.running and state.n_restarts <= baseline:
            log.info("started %s (pid %d)", unit, state.main_pid,
                     extra=event("worker_started", unit=unit, pid=state.main_pid))
            self.outcomes.append(Outcome(unit, Intent.START, True, f"{unit}: started (pid {state.main_pid})"))
            self._reporter.start_ok(unit)
            return False
        if not outcome.ok:
            # Refused, or the job itself failed: its result says why.
            reason, detail = result, f"job {result}"
        elif state.active_state is ActiveState.INACTIVE and not state.has_job:
            # Exited (and maybe garbage-collected: read back as a fresh inactive unit).
            reason, detail = "exited", f"job {result}, then inactive/{state.sub_state}"
        else:
            reason = (state.result if state.result != "success" else "restarted by systemd"
                      if state.n_restarts > baseline else f"{state.active_state}/{state.sub_state}")
            detail = (f"{state.active_state}/{state.sub_state}, result={state.result}, "
                      f"restarts={state.n_restarts} within the start check")
        self._reporter.start_failed(unit, reason, f"did not start: {detail}",
                                    n_restarts=state.n_restarts if state else 0)
        self.outcomes.append(Outcome(unit, Intent.START, False, f"{unit}: failed ({detail})",
                                     refused=outcome.refused))
        if state.active_state not in ("failed", "inactive") and not state.job_type:
            # Hold the backoff: systemd's own Restart= would otherwise retry it every RestartSec.
            self.stop([n], stop_timeout_s, quiet=True)
        return True

    def _unit(self, n: int) -> str:
        return worker_unit(n, self.pool)

    async def _restart(self, n: int, delay_s: float, stop_timeout_s: float) -> None:
        unit = self._unit(n)
        try:
            (outcome,) = await self._units.stop_units([unit], timeout_s=stop_timeout_s)
            state = await self._units.unit_state(unit, brief=True)
            if state.active_state == "failed":  # (SIGKILLed at TimeoutStopSec: ours to clear)
                await self._units.reset_failed(unit)
            if self._flight.get(n) is not Intent.RESTART or self.backoff.holds(self._clock()):
                return  # stopped meanwhile, or starts are held: the reconciler starts what is needed later
            self._flight[n] = Intent.START
            self.starts = startlimit.record(self.starts, [n], self._clock())
            end = await self._start_one(n, False, delay_s, 0, stop_timeout_s)
            if end is True:
                self._failed(f"a failed restart of {unit}")
            log.info("restarted %s: stop %s, start %s", unit, outcome.text,
                     "failed" if end is True else "ok", extra=event("worker_restarted", unit=unit))
        except (BusConnectionError, DqAgentError) as exc:
            log.warning("restart of %s not confirmed: %s", unit, exc, extra=event("stop_unconfirmed", error=str(exc)))
        finally:
            if self._flight.get(n) in (Intent.RESTART, Intent.START):
                del self._flight[n]

    async def _stop(self, n: int, timeout_s: float, quiet: bool) -> None:
        unit = self._unit(n)
        began = self._clock()
        try:
            (outcome,) = await self._units.stop_units([unit], timeout_s=timeout_s)
            took = self._clock() - began
            if not outcome.ok:
                log.error("stopping %s failed: %s", unit, outcome.text,
                          extra=event("worker_stop_failed", unit=unit, result=outcome.text))
                self.outcomes.append(Outcome(unit, Intent.STOP, False, f"{unit}: stop failed ({outcome.text})",
                                             refused=outcome.refused))
                return
            if outcome.seen is not None and outcome.seen.result == "success":
                # A clean stop leaves the unit inactive (dead): systemd sent Result before JobRemoved.
                result = "success"
            else:
                state = await self._units.unit_state(unit, brief=True)  # one call unless it failed
                result = state.result
                if state.active_state == "failed":
                    # Ours to clear: a unit we stopped must not stay listed as failed.
                    await self._units.reset_failed(unit)
            if result == "timeout":
                log.warning("stop of %s timed out after %g s, SIGKILLed", unit, round(took, 1),
                            extra=event("worker_stop_timeout", unit=unit, result=result,
                                        seconds=round(took, 1)))
            else:
                log.log(logging.DEBUG if quiet else logging.INFO, "stopped %s: %s", unit, outcome.text,
                        extra=event("worker_stopped", unit=unit, result=outcome.text))
            if not quiet:
                self.outcomes.append(Outcome(unit, Intent.STOP, True, f"{unit}: stopped ({outcome.text})"))
        except (BusConnectionError, DqAgentError) as exc:
            log.warning("stop of %s not confirmed: %s", unit, exc, extra=event("stop_unconfirmed", error=str(exc)))
        finally:
            if self._flight.get(n) is Intent.STOP:
                del self._flight[n]

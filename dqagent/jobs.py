"""The agent's own jobs in flight: start and stop jobs issued as background tasks, tracked across ticks.

The loop never awaits a job: `JobTable.start()`/`stop()` record the intent at once (the reconciler
counts it) and return; a task per start batch (StartUnit, then the PROCESS_STARTUP_DELAY check) or
per stopped unit (StopUnit, which waits out a draining worker) reports its outcome when systemd
finishes. This table and the crash-loop backoff are the agent's only memory between ticks.

A start passes its check when the unit is active/running and systemd has not restarted it since
(NRestarts no higher than before). A start that fails it, or one that reuses a failed unit's number,
backs off further starts (5 s doubling to 300 s, see `dqagent.reconciler.Backoff`); a unit that
failed its check is stopped, so systemd's own `Restart=` does not turn the crash loop back into a
tight one. A unit the agent stopped that ends
failed (a TimeoutStopSec SIGKILL: Result=timeout) is a WARNING `worker_stop_timeout`, and it is
reset-failed so it does not stay listed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Protocol

from dqagent.errors import BusConnectionError, DqAgentError, SystemdError
from dqagent.logs import event
from dqagent.reconciler import Backoff, Intent
from dqagent.reporter import Reporter
from dqagent.systemd import JobOutcome, UnitState, refused_by_polkit, worker_unit

log = logging.getLogger(__name__)


class UnitManager(Protocol):
    """What the agent needs from `dqagent.systemd.SystemdClient` (a fake implements it in unit tests)."""

    async def worker_states(self) -> list[UnitState]: ...
    async def unit_state(self, unit: str) -> UnitState: ...
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


class JobTable:
    """The agent's jobs in flight, by instance number; outcomes accumulate in `outcomes`."""

    def __init__(self, units: UnitManager, reporter: Reporter,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._units = units
        self._reporter = reporter
        self._clock = clock
        self._flight: dict[int, Intent] = {}
        self._tasks: dict[asyncio.Task[None], Intent] = {}
        self.backoff = Backoff()
        self.outcomes: list[Outcome] = []

    @property
    def in_flight(self) -> Mapping[int, Intent]:
        """A read-only view of what the agent is doing, for the reconciler."""
        return MappingProxyType(self._flight)

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
            self._failed(f"reusing failed unit(s) {', '.join(worker_unit(n) for n in reset)}")
        self._flight.update(dict.fromkeys(numbers, Intent.START))
        self._track(self._start(tuple(numbers), frozenset(reset), startup_delay_s, dict(baseline), stop_timeout_s),
                    Intent.START)

    def stop(self, numbers: Sequence[int], timeout_s: float, quiet: bool = False) -> None:
        """Stop each of `numbers` in its own background task (a draining worker delays no one else)."""
        for n in numbers:
            self._flight[n] = Intent.STOP
            self._track(self._stop(n, timeout_s, quiet), Intent.STOP)

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
        names = {n: worker_unit(n) for n in numbers}
        results: dict[int, str] = {}
        try:
            for n in numbers:
                if n in reset:
                    try:
                        await self._units.reset_failed(names[n])
                    except SystemdError as exc:
                        results[n] = f"error: {exc.name}"
            asked = [n for n in numbers if n not in results]
            for n, outcome in zip(asked, await self._units.start_units([names[n] for n in asked]), strict=True):
                results[n] = outcome.result
            if delay_s > 0 and any(r == "done" for r in results.values()):
                await asyncio.sleep(delay_s)
            after = {s.instance: s for s in await self._units.worker_states()}
            failed = [self._judge(n, names[n], results[n], after.get(n), baseline.get(n, 0), stop_timeout_s)
                      for n in numbers]
        except (BusConnectionError, SystemdError) as exc:
            log.warning("start of %s not confirmed: %s", ", ".join(names.values()), exc,
                        extra=event("start_unconfirmed", error=str(exc)))
            return
        finally:
            for n in numbers:
                if self._flight.get(n) is Intent.START:
                    del self._flight[n]
        if any(failed):
            self._failed(f"{sum(failed)} failed start(s)")
        else:
            self.backoff = self.backoff.after_success(self._clock())

    def _failed(self, why: str) -> None:
        self.backoff = self.backoff.after_failure(self._clock())
        wait_s = self.backoff.remaining_s(self._clock())
        log.warning("backing off starts for %.0fs after %s", wait_s, why,
                    extra=event("start_backoff", backoff_s=round(wait_s), failures=self.backoff.failures))

    def _judge(self, n: int, unit: str, result: str, state: UnitState | None, baseline: int,
               stop_timeout_s: float) -> bool:
        """Log and record one started unit; True if it failed its check."""
        if result == "done" and state is not None and state.running and state.n_restarts <= baseline:
            log.info("started %s (pid %d)", unit, state.main_pid,
                     extra=event("worker_started", unit=unit, pid=state.main_pid))
            self.outcomes.append(Outcome(unit, Intent.START, True, f"{unit}: started (pid {state.main_pid})"))
            self._reporter.start_ok(unit)
            return False
        if state is None or result != "done":
            # Vanished (exited and garbage-collected) or refused: the job result says why.
            reason, detail = (result if result != "done" else "exited"), f"job {result}, unit gone"
        else:
            reason = (state.result if state.result != "success" else "restarted by systemd"
                      if state.n_restarts > baseline else f"{state.active_state}/{state.sub_state}")
            detail = (f"{state.active_state}/{state.sub_state}, result={state.result}, "
                      f"restarts={state.n_restarts} within the start check")
        self._reporter.start_failed(unit, reason, f"did not start: {detail}",
                                    n_restarts=state.n_restarts if state else 0)
        self.outcomes.append(Outcome(unit, Intent.START, False, f"{unit}: failed ({detail})",
                                     refused=refused_by_polkit(result)))
        if state is not None and state.active_state not in ("failed", "inactive") and not state.job_type:
            # Hold the backoff: systemd's own Restart= would otherwise retry it every RestartSec.
            self.stop([n], stop_timeout_s, quiet=True)
        return True

    async def _stop(self, n: int, timeout_s: float, quiet: bool) -> None:
        unit = worker_unit(n)
        began = self._clock()
        try:
            (outcome,) = await self._units.stop_units([unit], timeout_s=timeout_s)
            took = self._clock() - began
            if not outcome.ok:
                log.error("stopping %s failed: %s", unit, outcome.result,
                          extra=event("worker_stop_failed", unit=unit, result=outcome.result))
                self.outcomes.append(Outcome(unit, Intent.STOP, False, f"{unit}: stop failed ({outcome.result})",
                                             refused=refused_by_polkit(outcome.result)))
                return
            state = await self._units.unit_state(unit)
            if state.active_state == "failed":
                # Ours to clear: a unit we stopped must not stay listed as failed.
                await self._units.reset_failed(unit)
            if state.result == "timeout":
                log.warning("stop of %s timed out after %g s, SIGKILLed", unit, round(took, 1),
                            extra=event("worker_stop_timeout", unit=unit, result=state.result,
                                        seconds=round(took, 1)))
            else:
                log.log(logging.DEBUG if quiet else logging.INFO, "stopped %s: %s", unit, outcome.result,
                        extra=event("worker_stopped", unit=unit, result=outcome.result))
            if not quiet:
                self.outcomes.append(Outcome(unit, Intent.STOP, True, f"{unit}: stopped ({outcome.result})"))
        except (BusConnectionError, DqAgentError) as exc:
            log.warning("stop of %s not confirmed: %s", unit, exc, extra=event("stop_unconfirmed", error=str(exc)))
        finally:
            if self._flight.get(n) is Intent.STOP:
                del self._flight[n]

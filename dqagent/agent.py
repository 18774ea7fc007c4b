"""The agent loop: the only place where the broker, systemd, the policy and notify meet.

Every tick re-reads demand from Redis and the workers from systemd (the agent keeps no list of
processes), asks the policy for a target, and starts or stops instances to reach it.
Transient faults (Redis down, a worker that fails) are logged when the state changes, reported in
STATUS=, and retried with capped backoff; the workers are never touched on unknown data.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from dqagent.config import Settings
from dqagent.demand import Demand, DemandProbe
from dqagent.errors import EXIT_OK, EXIT_UNAVAILABLE, BrokerError, BusConnectionError, SystemdError
from dqagent.logs import event
from dqagent.notify import Notifier
from dqagent.policies import Decision, Observation, Policy
from dqagent.reload import Reloader
from dqagent.systemd import ActiveState, JobOutcome, UnitState, refused_by_polkit, worker_unit
from dqagent.workercmd import shutdown_warning

log = logging.getLogger(__name__)

#: Longest pause between retries of a failing Redis or of failing worker starts.
MAX_BACKOFF_S = 300.0


class UnitManager(Protocol):
    """What the loop needs from `dqagent.systemd.SystemdClient` (a fake implements it in unit tests)."""

    async def worker_states(self) -> list[UnitState]: ...
    async def start_units(self, units: Sequence[str], timeout_s: float = ...) -> list[JobOutcome]: ...
    async def stop_units(self, units: Sequence[str], timeout_s: float = ...) -> list[JobOutcome]: ...
    async def reset_failed(self, unit: str) -> None: ...
    async def pending_job_type(self, unit: str = ...) -> str: ...
    async def wait_disconnected(self) -> None: ...


def free_instances(states: Sequence[UnitState], count: int) -> list[int]:
    """The `count` lowest instance numbers from 1 that no unit occupies."""
    taken = {s.instance for s in states if s.occupied}
    out: list[int] = []
    n = 1
    while len(out) < count:
        if n not in taken:
            out.append(n)
        n += 1
    return out


def highest_instances(states: Sequence[UnitState], count: int) -> list[int]:
    """The `count` highest occupied instance numbers (scale-down keeps numbering compact)."""
    return sorted((s.instance for s in states if s.occupied), reverse=True)[:count]


async def start_workers(units: UnitManager, states: Sequence[UnitState], count: int,
                        startup_delay_s: float) -> tuple[list[UnitState], list[UnitState]]:
    """Start `count` instances at the lowest free numbers; return (running, failed) after the delay.

    Failed instances are reset first so a number is reusable after start-limit-hit.
    """
    numbers = free_instances(states, count)
    names = [worker_unit(n) for n in numbers]
    by_name = {s.unit: s for s in states}
    refused: dict[str, str] = {}
    for name in names:
        if name in by_name:
            try:
                await units.reset_failed(name)
            except SystemdError as exc:
                refused[name] = f"error: {exc.name}"
    jobs = {o.unit: o.result for o in await units.start_units([n for n in names if n not in refused])}
    jobs.update(refused)
    if startup_delay_s > 0:
        await asyncio.sleep(startup_delay_s)
    after = {s.unit: s for s in await units.worker_states()}
    ok = [after[n] for n in names if n in after and after[n].running]
    bad = [after[n] for n in names if n in after and not after[n].running and n not in refused]
    # An instance that vanished (garbage-collected after exiting, or refused) did not start either;
    # its job result says why ("done" then exit, "failed", "error: ...AccessDenied").
    bad += [UnitState(name, n, ActiveState.INACTIVE, "dead", 0, 0, 0, f"job {jobs.get(name, 'unknown')}", False)
            for n, name in zip(numbers, names, strict=True) if name not in after or name in refused]
    return ok, bad


async def stop_workers(units: UnitManager, states: Sequence[UnitState], count: int,
                       timeout_s: float) -> list[JobOutcome]:
    """Stop the `count` highest-numbered instances concurrently, waiting for each job."""
    names = [worker_unit(n) for n in highest_instances(states, count)]
    return await units.stop_units(names, timeout_s=timeout_s)


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


async def scale_by(units: UnitManager, settings: Settings, delta: int) -> ScaleReport:
    """Add (or remove, delta < 0) workers now, within [MIN, MAX]; the agent continues from there."""
    states = await units.worker_states()
    current = sum(1 for st in states if st.occupied)
    wanted = current + delta
    target = settings.clamp(wanted)
    lines: list[str] = []
    failures: list[str] = []
    if target > current:
        ok, bad = await start_workers(units, states, target - current, settings.process_startup_delay_s)
        lines += [f"{st.unit}: started (pid {st.main_pid})" for st in ok]
        lines += [f"{st.unit}: failed ({st.active_state}/{st.sub_state}, result {st.result})" for st in bad]
        failures = [st.result for st in bad]
    elif target < current:
        outcomes = await stop_workers(units, states, current - target, stop_timeout_s(settings))
        lines += [f"{o.unit}: stopped ({o.result})" if o.ok else f"{o.unit}: stop failed ({o.result})"
                  for o in outcomes]
        failures = [o.result for o in outcomes if not o.ok]
    return ScaleReport(current, wanted, target, tuple(lines), len(failures),
                       refused=any(refused_by_polkit(r) for r in failures))


def stop_timeout_s(settings: Settings) -> float:
    """How long to wait for a stop job: systemd's own SIGKILL comes at GRACEFUL_SHUTDOWN_TIMEOUT."""
    return settings.graceful_shutdown_timeout_s + 60


def breakdown(demand: Demand) -> str:
    """Per-queue figures in one journal field, e.g. `q1:ready=3,in_flight=8,delayed=0,dead=0,orphaned=0`."""
    return ";".join(f"{q.queue}:ready={q.ready},in_flight={q.in_flight},delayed={q.delayed},"
                    f"dead={q.dead},orphaned={q.orphaned}" for q in demand.queues)


@dataclass
class _Health:
    """What has been logged, so each fault is logged once when it starts and once when it ends."""

    redis_error: str = ""
    redis_failures: int = 0
    failed_units: dict[str, str] = field(default_factory=dict)
    start_failures: int = 0
    systemd_error: str = ""
    start_backoff_until: float = 0.0


class Agent:
    """Runs the loop until asked to stop. Construct with real or fake collaborators."""

    def __init__(self, settings: Settings, units: UnitManager, probe: DemandProbe, notifier: Notifier,
                 policy: Policy, *, initial_processes: int | None = None,
                 clock: Callable[[], float] = time.monotonic, wallclock: Callable[[], float] = time.time,
                 watchdog_s: float | None = None,
                 own_unit: str = "dqagent.service", under_systemd: bool | None = None,
                 reloader: Reloader | None = None) -> None:
        self.s = settings
        self.units = units
        self.probe = probe
        self.notifier = notifier
        self.policy = policy
        self.initial = initial_processes
        self.clock = clock
        self.wallclock = wallclock
        self.watchdog_s = watchdog_s
        self.own_unit = own_unit
        self.under_systemd = bool(os.environ.get("INVOCATION_ID")) if under_systemd is None else under_systemd
        self.stop_requested = asyncio.Event()
        #: SIGHUP (`systemctl reload dqagent`): re-read the settings between two ticks (dqagent.reload).
        self.reloader = reloader
        self.reload_requested = asyncio.Event()
        self._policy_state: Any = policy.initial_state()
        self._health = _Health()
        #: The loop must finish its current step before this monotonic time, or the watchdog starves.
        self._progress_deadline = math.inf
        self._last_logged = -math.inf

    # -- the loop --------------------------------------------------------------------------------

    async def run(self) -> int:
        """Reconcile once, send READY, tick until stopped; returns the exit status."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_stop_signal)
        loop.add_signal_handler(signal.SIGHUP, self.reload_requested.set)
        watchdog = asyncio.create_task(self._watchdog()) if self.watchdog_s else None
        bus_lost = asyncio.create_task(self.units.wait_disconnected())
        try:
            warning = shutdown_warning(self.s.dramatiq_command, self.s.graceful_shutdown_timeout_s)
            if warning:
                log.warning("%s", warning, extra=event("config_warning"))
            await self._guard(self._adopt(), 120)
            self.notifier.ready()
            if self.initial is not None:
                # `start --processes N` is the operator's explicit count: hold it until the first check.
                self._progress_deadline = self.clock() + self.s.tick_interval_s() + self._tick_budget_s()
                await self._pause(self.s.tick_interval_s(), bus_lost)
            while not self.stop_requested.is_set():
                if self.reload_requested.is_set():
                    await self._reload()
                try:
                    delay = await self._guard(self.tick(), self._tick_budget_s())
                except SystemdError as exc:  # refused or failed request: transient, back off
                    delay = self._systemd_refused(exc)
                self._progress_deadline = self.clock() + delay + self._tick_budget_s()
                await self._pause(delay, bus_lost)
        except (BusConnectionError, SystemdError) as exc:  # SystemdError here: before the loop ran
            # Leave the workers alone: systemd restarts us (Restart=on-failure) and we adopt them.
            log.error("lost systemd: %s; exiting for systemd to restart the agent", exc,
                      extra=event("bus_lost"))
            return EXIT_UNAVAILABLE
        finally:
            bus_lost.cancel()
            if watchdog:
                watchdog.cancel()
        return await self._shutdown()

    async def _pause(self, delay_s: float, bus_lost: asyncio.Task[None]) -> None:
        """Wait for the next check, a stop or reload request, or the loss of the bus (raised)."""
        stop = asyncio.create_task(self.stop_requested.wait())
        reload = asyncio.create_task(self.reload_requested.wait())
        done, _ = await asyncio.wait({stop, reload, bus_lost}, timeout=delay_s,
                                     return_when=asyncio.FIRST_COMPLETED)
        stop.cancel()
        reload.cancel()
        if bus_lost in done:
            raise BusConnectionError("system bus connection lost")

    def _on_stop_signal(self) -> None:
        """Only flags the stop; and asks systemd for time to finish the current step and the stops."""
        if not self.stop_requested.is_set():
            self.notifier.extend_timeout(self._tick_budget_s() + stop_timeout_s(self.s))
        self.stop_requested.set()

    async def _reload(self) -> None:
        """Re-read the settings (dqagent.reload) between ticks; keeps the PID, the workers and, on an
        invalid file, the old settings. READY=1 follows RELOADING=1 in both cases, then the answer."""
        self.reload_requested.clear()
        if self.reloader is None:
            log.warning("SIGHUP ignored: this agent was started without a settings source to re-read",
                        extra=event("reload_failed", key=""))
            return
        self.notifier.reloading()
        outcome = await self.reloader.reload(self.s, self.probe)
        if outcome.policy is not None:
            if outcome.policy.name != self.policy.name:
                self._policy_state = outcome.policy.initial_state()
            self.s, self.probe, self.policy = outcome.settings, outcome.probe, outcome.policy
        self.notifier.ready()
        self.reloader.answer(outcome)

    async def _guard(self, step: Any, budget_s: float) -> Any:
        """Run one step of the loop with a progress deadline the watchdog task checks."""
        self._progress_deadline = self.clock() + budget_s
        return await step

    def _tick_budget_s(self) -> float:
        return (3 * self.s.redis_timeout_s + self.s.process_startup_delay_s
                + self.s.graceful_shutdown_timeout_s + 120)

    async def _watchdog(self) -> None:
        """Ping systemd's watchdog only while the loop keeps meeting its progress deadline."""
        assert self.watchdog_s
        while True:
            if self.clock() <= self._progress_deadline:
                self.notifier.watchdog()
            await asyncio.sleep(self.watchdog_s)

    async def _adopt(self) -> None:
        states = await self.units.worker_states()
        running = [s for s in states if s.running]
        for s in running:
            log.info("adopted %s (pid %d)", s.unit, s.main_pid,
                     extra=event("adopted", unit=s.unit, pid=s.main_pid))
        occupied = sum(1 for s in states if s.occupied)
        if self.initial is not None:
            target = self.s.clamp(self.initial)
            if target != self.initial:
                log.warning("--processes %d clamped to %d (MIN_PROCESSES=%d, MAX_PROCESSES=%d)",
                            self.initial, target, self.s.min_processes, self.s.max_processes,
                            extra=event("clamped", target=target))
        else:
            target = self.s.clamp(occupied)
        log.info("starting with %d workers (adopted %d)", target, len(running),
                 extra=event("start", workers=len(running), target=target))
        await self._reconcile(target, states, reason="startup")

    async def tick(self) -> float:
        """One check: read, decide, act. Returns the seconds until the next check."""
        try:
            demand = await self.probe.fetch_demand()
        except BrokerError as exc:
            return self._redis_down(str(exc))
        self._redis_up()
        if demand.orphaned:
            await self._recover(demand)
        states = await self.units.worker_states()
        self._note_failures(states)
        running = [s for s in states if s.running]
        now_us = self.wallclock() * 1e6
        starting = sum(1 for s in running
                       if now_us - s.active_enter_us < self.s.process_startup_delay_s * 1e6)
        queue_length = demand.queue_length(self.s.queue_metric)
        obs = Observation(now_s=self.clock(), queue_length=queue_length, ready=demand.ready,
                          in_flight=demand.in_flight, delayed=demand.delayed, workers=len(running),
                          starting=starting)
        decision, self._policy_state = self.policy.decide(obs, self._policy_state)
        if decision.target == 0 and demand.delayed > 0:
            # Only a consumer moves due messages (and Dramatiq's retries) out of the delay queue.
            decision = Decision(1, decision.reason + f"; {demand.delayed} delayed messages need a consumer")
        fields = dict(queue=",".join(self.s.queue_names), queue_length=queue_length, workers=len(running),
                      target=decision.target, ready=demand.ready, in_flight=demand.in_flight,
                      delayed=demand.delayed, dead_lettered=demand.dead, orphaned=demand.orphaned,
                      policy=self.policy.name, breakdown=breakdown(demand))
        # One record per decision at CHECK_INTERVAL; the target policy's faster polls log changes only.
        now = self.clock()
        routine = decision.target == len(running) and now - self._last_logged < self.s.check_interval_s
        log.log(logging.DEBUG if routine else logging.INFO, "decision: %d -> %d workers (%s)",
                len(running), decision.target, decision.reason, extra=event("decision", **fields))
        if not routine:
            self._last_logged = now
        await self._reconcile(decision.target, states, reason=decision.reason)
        self._status(len(running) if decision.target == len(running) else decision.target, queue_length)
        return self.s.tick_interval_s()

    # -- acting ----------------------------------------------------------------------------------

    async def _reconcile(self, target: int, states: list[UnitState], reason: str) -> None:
        occupied = sum(1 for s in states if s.occupied)
        if target > occupied:
            if self.clock() < self._health.start_backoff_until:
                log.debug("scale-up postponed: backing off after failed starts")
                return
            count = target - occupied
            log.info("scale up by %d to %d: %s", count, target, reason,
                     extra=event("scale_up", workers=occupied, target=target))
            ok, bad = await start_workers(self.units, states, count, self.s.process_startup_delay_s)
            for s in ok:
                log.info("started %s (pid %d)", s.unit, s.main_pid,
                         extra=event("worker_started", unit=s.unit, pid=s.main_pid))
            for s in bad:
                log.error("worker %s did not start: %s/%s, result=%s, restarts=%d", s.unit, s.active_state,
                          s.sub_state, s.result, s.n_restarts,
                          extra=event("worker_failed", unit=s.unit, result=s.result, n_restarts=s.n_restarts))
            if bad:
                self._health.start_failures += 1
                backoff = min(MAX_BACKOFF_S,
                              max(5.0, self.s.tick_interval_s()) * 2 ** (self._health.start_failures - 1))
                self._health.start_backoff_until = self.clock() + backoff
                log.warning("backing off scale-ups for %.0fs after %d failed start(s)", backoff, len(bad),
                            extra=event("start_backoff", backoff_s=round(backoff)))
            else:
                self._health.start_failures = 0
        elif target < occupied:
            count = occupied - target
            log.info("scale down by %d to %d: %s", count, target, reason,
                     extra=event("scale_down", workers=occupied, target=target))
            self._log_stops(await stop_workers(self.units, states, count, stop_timeout_s(self.s)))

    @staticmethod
    def _log_stops(outcomes: Sequence[JobOutcome]) -> None:
        for outcome in outcomes:
            if outcome.ok:
                log.info("stopped %s: %s", outcome.unit, outcome.result,
                         extra=event("worker_stopped", unit=outcome.unit, result=outcome.result))
            else:
                log.error("stopping %s failed: %s", outcome.unit, outcome.result,
                          extra=event("worker_stop_failed", unit=outcome.unit, result=outcome.result))

    def _systemd_refused(self, exc: SystemdError) -> float:
        """A request systemd refused or failed (e.g. polkit): log once per reason, retry later."""
        if self._health.systemd_error != exc.name:
            log.error("systemd refused a request, keeping the current workers: %s", exc,
                      extra=event("systemd_error", error=exc.name))
            self._health.systemd_error = exc.name
        self.notifier.status(f"systemd refused a request ({exc.name}), retry in {self.s.tick_interval_s():g}s")
        return self.s.tick_interval_s()

    async def _recover(self, demand: Demand) -> None:
        try:
            requeued = await self.probe.recover_orphans()
        except BrokerError as exc:
            log.warning("orphan recovery failed: %s", exc, extra=event("orphans_failed"))
            return
        log.warning("%d orphaned messages of dead workers found; %d requeued by Dramatiq's maintenance",
                    demand.orphaned, requeued,
                    extra=event("orphans_recovered", orphaned=demand.orphaned, requeued=requeued))

    def _note_failures(self, states: Sequence[UnitState]) -> None:
        """Log each failed or crash-looping unit once per distinct reason."""
        seen: dict[str, str] = {}
        for s in states:
            if s.running:
                continue
            if s.active_state.value == "failed" or s.sub_state == "auto-restart":
                reason = f"{s.active_state}/{s.sub_state} result={s.result} restarts={s.n_restarts}"
                seen[s.unit] = reason
                if self._health.failed_units.get(s.unit) != reason:
                    log.error("worker %s is not running: %s", s.unit, reason,
                              extra=event("worker_failed", unit=s.unit, result=s.result,
                                          n_restarts=s.n_restarts))
        self._health.failed_units = seen

    def _redis_down(self, message: str) -> float:
        h = self._health
        h.redis_failures += 1
        if not h.redis_error:
            log.error("redis unavailable, keeping the current workers: %s", message,
                      extra=event("redis_error", error=message))
        elif h.redis_error != message:  # same outage, different wording: not a new event
            log.debug("redis still unavailable: %s", message)
        h.redis_error = message
        # 2, 4, 8 ... s, capped at the larger of CHECK_INTERVAL and 30 s: quick to notice recovery,
        # never a tight loop against a dead server.
        retry = min(max(self.s.check_interval_s, 30.0), MAX_BACKOFF_S, 2.0 ** min(h.redis_failures, 10))
        self.notifier.status(f"redis unavailable ({message[:80]}), keeping workers, retry in {retry:.0f}s")
        return retry

    def _redis_up(self) -> None:
        h = self._health
        if h.redis_error:
            log.info("redis reachable again after %d failed checks", h.redis_failures,
                     extra=event("redis_ok"))
        h.redis_error = ""
        h.redis_failures = 0

    def _status(self, workers: int, queue_length: int) -> None:
        self.notifier.status(f"{workers} workers, queue {queue_length}, "
                             f"next check in {self.s.tick_interval_s():g}s")

    # -- stopping --------------------------------------------------------------------------------

    async def _shutdown(self) -> int:
        """Stop the workers only when the agent itself is being stopped, not restarted."""
        self.notifier.stopping()
        if self.under_systemd:
            try:
                job = await self.units.pending_job_type(self.own_unit)
            except (SystemdError, BusConnectionError) as exc:
                log.warning("cannot read my own pending job (%s); leaving the workers running", exc,
                            extra=event("shutdown", job="unknown"))
                return EXIT_OK
            stop_workers_now = job == "stop"
        else:
            job = "terminal"
            stop_workers_now = True
        states = await self.units.worker_states()
        occupied = [s for s in states if s.occupied]
        if not stop_workers_now:
            log.info("agent %s: leaving %d workers running for the next agent", job or "exit", len(occupied),
                     extra=event("shutdown", workers=len(occupied), job=job))
            return EXIT_OK
        log.info("agent stopping (%s): stopping %d workers gracefully", job, len(occupied),
                 extra=event("shutdown", workers=len(occupied), job=job))
        self.notifier.extend_timeout(stop_timeout_s(self.s) + 10)
        self._log_stops(await stop_workers(self.units, states, len(occupied), stop_timeout_s(self.s)))
        # Failed instances hold no process but stay listed; clear them so nothing is left behind.
        for s in states:
            if s.active_state.value == "failed":
                with contextlib.suppress(SystemdError):
                    await self.units.reset_failed(s.unit)
        return EXIT_OK

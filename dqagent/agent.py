"""The agent: its life cycle, and the sequence of one tick; the only place where the effects meet.

Life cycle: adopt the workers systemd runs, READY, tick until SIGTERM/SIGINT, then STOPPING; on
`systemctl stop dqagent` stop the workers and wait for them, on a restart leave them for the next
agent; exit for systemd to restart us when the system bus goes away. The watchdog is pinged only
while ticks keep their progress deadline.

A tick that raises an error no handler foresaw (a bug, or broker data no check caught) is logged with its
traceback once per distinct error, counted as `source="internal"`, and the loop goes on at the next
interval with the workers as they are: one bad value or one bug must not become a restart loop, which
would also drop the PID, the job table and the policy's memory. Such a tick still counts as progress for
the watchdog, which is there for a loop that no longer comes round (a hang), not for one whose check
failed: systemd restarting the agent would not make the same check pass.

A tick re-reads demand from Redis and the workers from systemd (the agent keeps no list of
processes), asks the policy for a target, lets the pure reconciler (`dqagent.reconciler`) turn
that into actions, and hands them to the job table (`dqagent.jobs`), which runs them in the
background: a tick never waits for a worker to start or drain. STATUS= and de-duplicated fault
logs are the reporter's (`dqagent.reporter`). Settings are read from `self.s` on every tick.
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
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from dqagent import __version__
from dqagent.config import Settings
from dqagent.demand import Demand, DemandProbe, QueueDemand
from dqagent.errors import (
    EXIT_OK,
    EXIT_UNAVAILABLE,
    BrokerError,
    BusConnectionError,
    ConfigError,
    SystemdError,
    SystemdTimeoutError,
)
from dqagent.fleetstore import FleetCoordinator
from dqagent.jobs import JobTable, ScaleReport, UnitManager, restart_baseline, scale_by, stop_timeout_s
from dqagent.logs import event
from dqagent.notify import Notifier
from dqagent.policies import Policy
from dqagent.pressure import HostGuard, MemoryReader
from dqagent.reconciler import Intent, Plan, census, has_foreign_job, reconcile
from dqagent.reload import Reloader
from dqagent.reporter import Reporter
from dqagent.snapshot import Accumulator, Counters, Direction, Reason, Snapshot, Source, WorkerCounts
from dqagent.step import Check, FleetInput, Memory, NeedsHost, Observed, Rules, decide, observe
from dqagent.systemd import UnitState
from dqagent.untrusted import Rejection
from dqagent.workercmd import startup_warnings

if TYPE_CHECKING:  # imported only when a metrics setting is set (prometheus_client is slow to import)
    from dqagent.metrics import Exporter

__all__ = ["Agent", "ScaleReport", "UnitManager", "scale_by", "stop_timeout_s"]

log = logging.getLogger(__name__)

#: Longest pause between retries of a failing Redis.
MAX_BACKOFF_S = 300.0


class Agent:
    """Runs the loop until asked to stop. Construct with real or fake collaborators."""

    def __init__(self, settings: Settings, units: UnitManager, probe: DemandProbe, notifier: Notifier,
                 policy: Policy, *, initial_processes: int | None = None,
                 clock: Callable[[], float] = time.monotonic, wallclock: Callable[[], float] = time.time,
                 watchdog_s: float | None = None,
                 own_unit: str = "dqagent.service", under_systemd: bool | None = None,
                 reloader: Reloader | None = None, fleet: FleetCoordinator | None = None) -> None:
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
        #: What one check hands the next (`dqagent.step.Memory`): the policy's state and more.
        self.memory = Memory(policy.initial_state())
        #: Fleet mode (issue 13, dqagent.fleetstore): used while FLEET is set.
        self.fleet = fleet if fleet is not None else FleetCoordinator()
        self.reporter = Reporter(notifier)
        self.jobs = JobTable(units, self.reporter, clock)
        #: Caps scale-ups by the host's headroom (issue 14: dqagent.guard, dqagent.pressure).
        self.guard = HostGuard(units if isinstance(units, MemoryReader) else None, clock)
        #: The loop must finish its current step before this monotonic time, or the watchdog starves.
        self._progress_deadline = math.inf
        # Metrics (issue 12): the loop's cumulative counters and the snapshot `dqagent.metrics` reads.
        self.counters = Accumulator()
        #: The last tick's figures (replaced whole, never mutated): all a scrape reads.
        self.latest: Snapshot | None = None
        self._last_decision_s: float | None = None
        self.exporter: Exporter | None = None

    # -- life cycle ------------------------------------------------------------------------------

    async def run(self) -> int:
        """Adopt, send READY, tick until stopped; returns the exit status."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_stop_signal)
        loop.add_signal_handler(signal.SIGHUP, self.reload_requested.set)
        failed = self._start_exporter()
        if failed is not None:
            return failed
        watchdog = asyncio.create_task(self._watchdog()) if self.watchdog_s else None
        bus_lost = asyncio.create_task(self.units.wait_disconnected())
        try:
            for warning in startup_warnings(self.s, os.cpu_count()):
                log.warning("%s", warning, extra=event("config_warning"))
            self.guard.warn_missing(self.s)
            await self._guard(self._adopt(), self._tick_budget_s())
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
                except SystemdTimeoutError as exc:  # busy or hung: transient, back off
                    delay = self.s.tick_interval_s()
                    self.reporter.systemd_timeout(exc.text, delay)
                    self._source_failed(Source.SYSTEMD)
                except SystemdError as exc:  # refused or failed request: transient, back off
                    delay = self.s.tick_interval_s()
                    self.reporter.systemd_refused(exc.name, str(exc), delay)
                    self._source_failed(Source.SYSTEMD)
                except BusConnectionError:
                    raise
                except Exception as exc:  # a bug, or data no check caught: reported, the loop goes on
                    delay = self.s.tick_interval_s()
                    self.reporter.tick_failed(exc, delay)
                    self._source_failed(Source.INTERNAL)
                else:
                    self.reporter.systemd_ok()
                    self.reporter.tick_ok()
                self._progress_deadline = self.clock() + delay + self._tick_budget_s()
                await self._pause(delay, bus_lost)
        except (BusConnectionError, SystemdError) as exc:  # SystemdError here: before the loop ran
            # Leave the workers alone: systemd restarts us (Restart=on-failure) and we adopt them.
            log.error("lost systemd: %s; exiting for systemd to restart the agent", exc,
                      extra=event("bus_lost"))
            self.jobs.cancel()
            return EXIT_UNAVAILABLE
        finally:
            bus_lost.cancel()
            if watchdog:
                watchdog.cancel()
        try:
            return await self._shutdown()
        finally:
            if self.exporter is not None:
                self.exporter.close()

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
                self.memory = replace(self.memory, policy_state=outcome.policy.initial_state())
            self.s, self.probe, self.policy = outcome.settings, outcome.probe, outcome.policy
            self._reload_exporter()
            self.guard.warn_missing(self.s)  # GUARD may have been turned on
        self.notifier.ready()
        self.reloader.answer(outcome)

    async def _guard(self, step: Any, budget_s: float) -> Any:
        """Run one step of the loop with a progress deadline the watchdog task checks."""
        self._progress_deadline = self.clock() + budget_s
        return await step

    def _tick_budget_s(self) -> float:
        """A tick reads Redis (up to 3 calls) and systemd; it never waits for a job."""
        return 3 * self.s.redis_timeout_s + 60

    async def _watchdog(self) -> None:
        """Ping systemd's watchdog only while the loop keeps meeting its progress deadline."""
        assert self.watchdog_s
        while True:
            if self.clock() <= self._progress_deadline:
                self.notifier.watchdog()
            await asyncio.sleep(self.watchdog_s)

    async def _adopt(self) -> None:
        """Take over whatever systemd runs; issue (not await) the jobs that reach the start target."""
        states = await self.units.worker_states(brief=("MainPID",))
        running = [s for s in states if s.running]
        for s in running:
            log.info("adopted %s (pid %d)", s.unit, s.main_pid,
                     extra=event("adopted", unit=s.unit, pid=s.main_pid))
        pool = census(states, self.jobs.in_flight).pool
        if self.initial is not None:
            target = self.s.clamp(self.initial)
            if target != self.initial:
                log.warning("--processes %d clamped to %d (MIN_PROCESSES=%d, MAX_PROCESSES=%d)",
                            self.initial, target, self.s.min_processes, self.s.max_processes,
                            extra=event("clamped", target=target))
        else:
            target = self.s.clamp(pool)
        log.info("starting with %d workers (adopted %d)", target, len(running),
                 extra=event("start", workers=len(running), target=target))
        self._act(states, target, reason="startup", label=Reason.STARTUP)

    # -- one tick --------------------------------------------------------------------------------

    async def tick(self) -> float:
        """One check: read, decide (`dqagent.step`), act, report. Returns the seconds until the next check."""
        began = self.clock()
        try:
            demand = await self.probe.fetch_demand()
        except BrokerError as exc:
            return self._broker_down(str(exc))
        self.reporter.redis_up()
        self._rejected(demand.rejected)
        self.reporter.note_ages(demand)
        if demand.orphaned:
            await self._recover(demand)
        states = await self.units.worker_states(brief=("ActiveEnterTimestamp",))
        observed = Observed(self.clock(), self.wallclock() * 1e6, demand, states, self.jobs.in_flight,
                            self.jobs.backoff)
        self.reporter.note_units(states, self.jobs.in_flight, observed.now_us, self.s.process_startup_delay_s)
        rules = Rules.from_settings(self.s, self.policy)
        fleet: FleetInput | None = None
        if self.s.fleet:  # fleet mode: publish this host and read the others, for the step to share G
            try:
                fleet = await self.fleet.sync(self.s, observe(rules, observed))
            except (BrokerError, ConfigError) as exc:  # like an unreadable demand: keep the workers
                return self._broker_down(str(exc))  # (ConfigError: a reload left this host without an id)
            self._rejected(fleet.view.rejected)
        check = decide(rules, observed, self.memory, fleet=fleet)
        if isinstance(check, NeedsHost):  # a scale-up: the guard reads the host, then the same decision
            check = decide(rules, observed, self.memory, fleet=fleet, host=await self.guard.read(self.s))
        assert isinstance(check, Check), "the step asks for the host only once"
        self.memory = check.memory
        self.guard.note(check.verdict, check.seen.census.pool)
        if fleet is not None:
            self.fleet.remember(fleet, check.share)
        await self._carry_out(check, states, demand, began)
        return check.next_read_s

    async def _carry_out(self, check: Check, states: Sequence[UnitState], demand: Demand, began: float) -> None:
        """Act on one check and report it: the decision line, the jobs, the fleet record, STATUS=, the snapshot."""
        pool, target = check.seen.census.pool, check.decision.target
        log.log(logging.DEBUG if check.routine else logging.INFO, "decision: %d -> %d workers (%s)", pool, target,
                check.decision.reason, extra=event("decision", **check.fields))
        plan = check.plan
        self._issue(plan, states, check.decision.reason, check.label)
        if check.share is not None:  # the pool this tick leaves, published for the other members at once
            await self.fleet.publish(self.s, plan.pool + len(plan.start) - len(plan.stop),
                                     check.seen.obs.starting + len(plan.start))
        self.reporter.status(plan, states, self.jobs.backoff.remaining_s(self.clock()), check.seen.obs.queue_length,
                             check.next_read_s, note=check.verdict.status())
        self.counters.decision_took(self.clock() - began)
        self._last_decision_s = self.wallclock()
        c = census(states, self.jobs.in_flight)  # with this tick's own starts and stops counted
        self._publish(self._snapshot(redis_up=True, queues=demand.queues, workers=WorkerCounts(
            running=c.running, starting=c.coming, stopping=c.going, failed=c.failing, desired=plan.wanted)))

    def _broker_down(self, message: str) -> float:
        """Demand (or the fleet) unreadable: counted, the workers kept, the next try after the backoff."""
        self.counters.source_error(Source.REDIS)
        self._publish(self._snapshot(redis_up=False, workers=self.latest.workers if self.latest else None))
        return self._redis_down(message)

    def _act(self, states: Sequence[UnitState], target: int, reason: str, label: str) -> Plan:
        """Adoption: reconcile toward `target` and issue the actions (a check's plan comes from the step)."""
        plan = reconcile(states, target, min_processes=self.s.min_processes, max_processes=self.s.max_processes,
                         in_flight=self.jobs.in_flight, backoff=self.jobs.backoff, now_s=self.clock())
        self._issue(plan, states, reason, label)
        return plan

    def _issue(self, plan: Plan, states: Sequence[UnitState], reason: str, label: str) -> None:
        """Hand a plan's actions to the job table (which runs them in the background), counted and logged.

        `label` is the bounded metrics reason (`dqagent.snapshot.Reason`, or the policy's name).
        """
        for numbers, direction in ((plan.start, Direction.UP), (plan.stop, Direction.DOWN)):
            if numbers:
                self.counters.scale_action(direction, label)
        if plan.start:
            log.info("scale up by %d to %d: %s", len(plan.start), plan.pool + len(plan.start), reason,
                     extra=event("scale_up", workers=plan.pool, target=plan.pool + len(plan.start)))
            self.jobs.start(plan.start, plan.reset, self.s.process_startup_delay_s, restart_baseline(states, plan),
                            stop_timeout_s(self.s))
        elif plan.held_by_backoff:
            log.debug("scale-up to %d held: backing off after failed starts", plan.wanted)
        if plan.stop:
            log.info("scale down by %d to %d: %s", len(plan.stop), plan.pool - len(plan.stop), reason,
                     extra=event("scale_down", workers=plan.pool, target=plan.pool - len(plan.stop)))
            self.jobs.stop(plan.stop, stop_timeout_s(self.s))

    async def _recover(self, demand: Demand) -> None:
        try:
            requeued = await self.probe.recover_orphans()
        except BrokerError as exc:
            log.warning("orphan recovery failed: %s", exc, extra=event("orphans_failed"))
            return
        log.warning("%d orphaned messages of dead workers found; %d requeued by Dramatiq's maintenance",
                    demand.orphaned, requeued,
                    extra=event("orphans_recovered", orphaned=demand.orphaned, requeued=requeued))

    def _redis_down(self, message: str) -> float:
        # 2, 4, 8 ... s, capped at the larger of CHECK_INTERVAL and 30 s: quick to notice recovery,
        # never a tight loop against a dead server.
        failures = self.reporter.redis_failures + 1
        retry = min(max(self.s.check_interval_s, 30.0), MAX_BACKOFF_S, 2.0 ** min(failures, 10))
        self.reporter.redis_down(message, retry)
        return retry

    # -- metrics (issue 12) -----------------------------------------------------------------------

    def _rejected(self, rejections: Sequence[Rejection]) -> None:
        """Broker data a read skipped: each skip counted, each distinct one logged once (the reporter)."""
        for r in rejections:
            self.counters.record_rejected(r.kind)
        self.reporter.rejected(rejections)

    def _source_failed(self, source: Source) -> None:
        """A tick that systemd refused or did not answer, or that failed unexpectedly: counted, and the
        snapshot's counters refreshed."""
        self.counters.source_error(source)
        if self.latest is not None:
            self._publish(replace(self.latest, counters=self._frozen_counters()))

    def _frozen_counters(self) -> Counters:
        return self.counters.frozen(self.reporter.start_failures, self.reporter.oom_kills)

    def _snapshot(self, *, redis_up: bool, workers: WorkerCounts | None,
                  queues: tuple[QueueDemand, ...] = ()) -> Snapshot:
        return Snapshot(version=__version__, policy=self.policy.name, taken_at_s=self.wallclock(),
                        redis_up=redis_up, min_processes=self.s.min_processes, max_processes=self.s.max_processes,
                        workers=workers, queues=queues, last_decision_s=self._last_decision_s,
                        counters=self._frozen_counters(), guard_holding=self._guard_holding())

    def _guard_holding(self) -> str | None:
        if not self.s.guard:
            return None
        held = self.guard.holding
        return held.resource if held is not None else ""

    def _publish(self, snap: Snapshot) -> None:
        """Replace `latest` in one assignment (scrapes read it from other threads), then the textfile."""
        self.latest = snap
        if self.exporter is not None:
            self.exporter.publish()

    def _start_exporter(self) -> int | None:
        """Serve METRICS_ADDRESS / write METRICS_TEXTFILE when set; an exit status when it cannot listen."""
        if not (self.s.metrics_address or self.s.metrics_textfile):
            return None
        from dqagent.metrics import Exporter, MetricsError

        self.exporter = Exporter(lambda: self.latest, self.s.metrics_address, self.s.metrics_textfile)
        try:
            self.exporter.start()
        except MetricsError as exc:
            log.error("%s", exc, extra=event("metrics_error", error=str(exc)))
            return exc.exit_code
        return None

    def _reload_exporter(self) -> None:
        """A reload may set, change or clear METRICS_ADDRESS: listen again (a failure is logged, not fatal)."""
        if self.exporter is None:
            self._start_exporter()
            return
        if self.exporter.address == self.s.metrics_address:
            return
        from dqagent.metrics import MetricsError

        try:
            self.exporter.serve(self.s.metrics_address)
        except MetricsError as exc:
            log.error("%s", exc, extra=event("metrics_error", error=str(exc)))

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
                self.jobs.cancel()
                return EXIT_OK
            stop_workers_now = job == "stop"
        else:
            job = "terminal"
            stop_workers_now = True
        if not stop_workers_now:
            self.jobs.cancel()  # their systemd jobs run on; the next agent counts what they left
            states = await self.units.worker_states()
            occupied = sum(1 for s in states if s.occupied)
            log.info("agent %s: leaving %d workers running for the next agent", job or "exit", occupied,
                     extra=event("shutdown", workers=occupied, job=job))
            return EXIT_OK
        self.notifier.extend_timeout(stop_timeout_s(self.s) + self.s.process_startup_delay_s + 30)
        await self.jobs.wait(Intent.START)  # a start in flight ends first, so its unit is stopped too
        states = await self.units.worker_states()
        flight = self.jobs.in_flight
        ours = [s for s in states if s.occupied and not has_foreign_job(s, flight.get(s.instance))
                and flight.get(s.instance) is not Intent.STOP]
        for s in states:
            if s.occupied and has_foreign_job(s, flight.get(s.instance)):
                log.warning("leaving %s alone: it has a %s job the agent did not start", s.unit, s.job_type,
                            extra=event("foreign_job", unit=s.unit, job=s.job_type))
        log.info("agent stopping (%s): stopping %d workers gracefully", job, len(ours),
                 extra=event("shutdown", workers=len(ours), job=job))
        if self.s.fleet:  # leave the fleet now: the others take this host's share without waiting for its TTL
            with contextlib.suppress(BrokerError):
                await self.fleet.leave(self.s)
        self.jobs.stop([s.instance for s in ours], stop_timeout_s(self.s))
        # Failed instances hold no process but stay listed; clear them so nothing is left behind.
        for s in states:
            if s.active_state == "failed" and not s.job_type:
                with contextlib.suppress(SystemdError):
                    await self.units.reset_failed(s.unit)
        await self.jobs.wait()
        return EXIT_OK

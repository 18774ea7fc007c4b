"""The loop: one check after another, each read -> decide -> act -> report.

A check re-reads demand from Redis and the workers from systemd (the agent keeps no list of
processes), calls the pure decision step (`dqagent.core.step`: policy, delayed-message floor, guard,
reconciler, next read), hands the plan to the job table (`dqagent.systemd.jobtable`), which runs it in the
background (a check never waits for a worker to start or drain), and reports: the decision line,
STATUS= and de-duplicated fault logs (`dqagent.report.reporter`), the counters and the snapshot a scrape
reads (`dqagent.core.snapshot`). Settings are read from `self.s` on every check. The process around it
(signals, READY/WATCHDOG/RELOADING/STOPPING, reload, shutdown) is `dqagent.agent.lifecycle`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

from dqagent import __version__
from dqagent.broker.fleetstore import FleetCoordinator
from dqagent.core.demand import Demand, DemandProbe, QueueDemand
from dqagent.core.policies import Policy
from dqagent.core.reconciler import Backoff, Plan, census, reconcile
from dqagent.core.snapshot import (
    Accumulator,
    Counters,
    Direction,
    PoolFigures,
    Reason,
    Snapshot,
    Source,
    WorkerCounts,
)
from dqagent.core.step import Check, FleetInput, Memory, NeedsHost, Observed, Rules, decide, observe
from dqagent.core.units import UnitState
from dqagent.core.untrusted import Rejection
from dqagent.errors import BrokerError, ConfigError
from dqagent.host.pressure import HostGuard, MemoryReader
from dqagent.report.logs import event
from dqagent.report.notify import Notifier
from dqagent.report.reporter import Reporter
from dqagent.settings.config import Settings
from dqagent.settings.parsers import DEFAULT_POOL
from dqagent.systemd.jobtable import JobTable, UnitManager, restart_baseline, stop_timeout_s

if TYPE_CHECKING:  # imported only when a metrics setting is set (prometheus_client is slow to import)
    from dqagent.report.metrics import Exporter

log = logging.getLogger(__name__)

#: Longest pause between retries of a failing Redis.
MAX_BACKOFF_S = 300.0


class Loop:
    """The checks, and what they carry from one to the next. `dqagent.agent.lifecycle.Agent` runs them."""

    def __init__(self, settings: Settings, units: UnitManager, probe: DemandProbe, notifier: Notifier,
                 policy: Policy, *, initial_processes: int | None = None,
                 clock: Callable[[], float] = time.monotonic, wallclock: Callable[[], float] = time.time,
                 fleet: FleetCoordinator | None = None) -> None:
        self.s = settings
        self.units = units
        self.probe = probe
        self.notifier = notifier
        self.policy = policy
        self.initial = initial_processes
        self.clock = clock
        self.wallclock = wallclock
        #: What one check hands the next (`dqagent.core.step.Memory`): the policy's state and more.
        self.memory = Memory(policy.initial_state())
        #: Fleet mode (`dqagent.broker.fleetstore`): used while FLEET is set.
        self.fleet = fleet if fleet is not None else FleetCoordinator()
        #: The loop's cumulative counters (the reporter counts the failures it logs there too).
        self.counters = Accumulator()
        self.reporter = Reporter(notifier, self.counters)
        self.jobs = JobTable(units, self.reporter, clock)
        #: Reads the host's headroom when the step asks for it (`dqagent.host.pressure`), and logs holds.
        self.guard = HostGuard(units if isinstance(units, MemoryReader) else None, clock)
        #: The last check's figures (replaced whole, never mutated): with the counters, all a scrape reads
        #: (`dqagent.report.metrics`).
        self.latest: Snapshot | None = None
        self._last_decision_s: float | None = None
        #: Whether the last check ran to its end (not one that found Redis down).
        self.completed = False
        #: Set by the life cycle when METRICS_ADDRESS or METRICS_TEXTFILE is set.
        self.exporter: Exporter | None = None

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
        """One check: read, decide (`dqagent.core.step`), act, report. Returns the seconds until the next check."""
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
        observed = self._observed(Observed(self.clock(), self.wallclock() * 1e6, demand, states, {}, Backoff()))
        self.reporter.note_units(states, self.jobs.in_flight, observed.now_us, self.s.process_startup_delay_s)
        rules = Rules.from_settings(self.s, self.policy)
        fleet: FleetInput | None = None
        if self.s.fleet:  # fleet mode: publish this host and read the others, for the step to share G
            try:
                fleet = await self.fleet.sync(self.s, observe(rules, observed))
            except (BrokerError, ConfigError) as exc:  # like an unreadable demand: keep the workers
                return self._broker_down(str(exc))  # (ConfigError: a reload left this host without an id)
            self._rejected(fleet.view.rejected)
        # The jobs in flight and the backoff as they are after each wait (a start's check may end meanwhile).
        check = decide(rules, self._observed(observed), self.memory, fleet=fleet)
        if isinstance(check, NeedsHost):  # a scale-up: the guard reads the host, then the same decision
            host = await self.guard.read(self.s)
            check = decide(rules, self._observed(observed), self.memory, fleet=fleet, host=host)
        assert isinstance(check, Check), "the step asks for the host only once"
        self.memory = check.memory
        self.guard.note(check.verdict, check.seen.census.pool)
        if fleet is not None:
            self.fleet.remember(fleet, check.share)
        await self._carry_out(check, states, demand, began)
        self.completed = True
        return check.next_read_s

    def _observed(self, observed: Observed) -> Observed:
        """`observed` with a copy of the agent's jobs in flight and its backoff as they are now."""
        return replace(observed, in_flight=dict(self.jobs.in_flight), backoff=self.jobs.backoff)

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
            running=c.running, starting=c.coming, stopping=c.going, failed=c.failing, desired=plan.wanted),
            share=check.budget.share if check.budget is not None else None))

    def _broker_down(self, message: str) -> float:
        """Demand (or the fleet) unreadable: counted, the workers kept, the next try after the backoff."""
        self.completed = False
        self.counters.source_error(Source.REDIS)
        self._publish(self._snapshot(redis_up=False, workers=self.latest.default.workers if self.latest else None))
        return self._redis_down(message)

    def _act(self, states: Sequence[UnitState], target: int, reason: str, label: str) -> Plan:
        """Adoption: reconcile toward `target` and issue the actions (a check's plan comes from the step)."""
        plan = reconcile(states, target, min_processes=self.s.min_processes, max_processes=self.s.max_processes,
                         in_flight=self.jobs.in_flight, backoff=self.jobs.backoff, now_s=self.clock())
        self._issue(plan, states, reason, label)
        return plan

    def _issue(self, plan: Plan, states: Sequence[UnitState], reason: str, label: str) -> None:
        """Hand a plan's actions to the job table (which runs them in the background), counted and logged.

        `label` is the bounded metrics reason (`dqagent.core.snapshot.Reason`, or the policy's name).
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

    # -- metrics -----------------------------------------------------------------------

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
        return self.counters.frozen()

    def _snapshot(self, *, redis_up: bool, workers: WorkerCounts | None,
                  queues: tuple[QueueDemand, ...] = (), share: int | None = None) -> Snapshot:
        pool = PoolFigures(DEFAULT_POOL, self.policy.name, self.s.min_processes, self.s.max_processes, workers,
                           queues, priority=self.s.pool_priority, share=share)
        return Snapshot(version=__version__, taken_at_s=self.wallclock(), redis_up=redis_up, pools=(pool,),
                        last_decision_s=self._last_decision_s, counters=self._frozen_counters(),
                        guard_holding=self._guard_holding(), host_max_processes=self.s.host_max_processes)

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

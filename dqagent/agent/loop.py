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
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

from dqagent import __version__
from dqagent.agent import outage as broker_outage
from dqagent.agent.forecasting import Forecasts
from dqagent.agent.pausing import PauseBook
from dqagent.agent.pools import PoolHost, PoolRun, demand_of
from dqagent.agent.workers import Watch, activity, restarted, watch_pools
from dqagent.broker.fleetstore import FleetCoordinator
from dqagent.core.demand import Demand, DemandProbe
from dqagent.core.history import DecisionNote, History, Point
from dqagent.core.hoststep import PoolInput, decide_host, is_due
from dqagent.core.policies import Policy
from dqagent.core.prediction import Forecast
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
from dqagent.core.step import Check, FleetInput, NeedsHost, Observed, Rules, observe
from dqagent.core.units import UnitState, of_pool
from dqagent.core.untrusted import Rejection
from dqagent.errors import BrokerError, ConfigError
from dqagent.host.pressure import HostGuard, MemoryReader
from dqagent.host.reports import REPORT_ROOT
from dqagent.report.logs import event
from dqagent.report.notify import Notifier
from dqagent.report.reporter import Reporter
from dqagent.settings.config import Settings
from dqagent.settings.parsers import DEFAULT_POOL
from dqagent.settings.pools import Pool
from dqagent.systemd.jobtable import UnitManager, restart_baseline, stop_timeout_s

if TYPE_CHECKING:  # imported only when a metrics setting is set (prometheus_client is slow to import)
    from dqagent.report.metrics import Exporter

log = logging.getLogger(__name__)

#: Longest pause between retries of a failing Redis.
MAX_BACKOFF_S = 300.0


class Loop(PoolHost):
    """The checks, and what they carry from one to the next. `dqagent.agent.lifecycle.Agent` runs them.

    Every pool (`dqagent.agent.pools.PoolRun`, the default pool first) has its own policy, memory and job
    table; `s`, `policy`, `memory` and `jobs` are the default pool's (dqagent.env's settings are also the
    host-wide ones). A pool decides on its own schedule (its policy's next read); between its checks the
    host budget counts it at its current size.
    """

    def __init__(self, settings: Settings, units: UnitManager, probe: DemandProbe, notifier: Notifier,
                 policy: Policy, *, initial_processes: int | None = None,
                 clock: Callable[[], float] = time.monotonic, wallclock: Callable[[], float] = time.time,
                 fleet: FleetCoordinator | None = None, pools: Sequence[Pool] = (),
                 pool_policies: Mapping[str, Policy] | None = None) -> None:
        self.probe = probe
        self.notifier = notifier
        self.initial = initial_processes
        self.wallclock = wallclock
        #: The loop's cumulative counters (the reporter counts the failures it logs there too).
        self.counters = Accumulator()
        super().__init__(settings, policy, units, Reporter(notifier, self.counters), clock, fleet, pools,
                         pool_policies)
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
        #: The pools' pauses (`dqagent pause`, `dqagent.agent.pausing`); in memory unless given a directory.
        self.pauses = PauseBook(None, wallclock)
        #: The broker outage under way, if any (`dqagent.agent.outage`: BROKER_FAILURE).
        self.outage = broker_outage.OutageState()
        #: Each pool's figures over the last hour and the last decisions, for the status page (bounded).
        self.history = History()
        self._rejected_now: tuple[Rejection, ...] = ()
        #: Where the workers' reports are read (`dqagent.host.reports`), and each pool's view of them.
        self.report_root = REPORT_ROOT
        self.watches: dict[str, Watch] = {}
        #: PREDICTIVE: each pool's forecaster (`dqagent.agent.forecasting`); in memory unless given a directory.
        self.forecasts = Forecasts(None, clock, wallclock)

    async def _adopt(self) -> None:
        """Take over whatever systemd runs; issue (not await) the jobs that reach each pool's start target."""
        states = await self.units.worker_states(brief=("MainPID",))
        self._note_undeclared(states)
        for run in self.runs.values():
            mine = of_pool(states, run.name)
            running = [s for s in mine if s.running]
            for s in running:
                log.info("adopted %s (pid %d)", s.unit, s.main_pid,
                         extra=event("adopted", unit=s.unit, pid=s.main_pid, dqagent_pool=run.name))
            paused = self.pauses.get(run.name, self.wallclock())
            if paused is not None:  # held as it is: the first check applies it (a pause freezes, --at scales)
                log.info("pool %s: %s at start (adopted %d)", run.name, paused.status(self.wallclock()), len(running),
                         extra=event("start", workers=len(running), target=len(running), dqagent_pool=run.name))
                continue
            target = run.s.clamp(census(mine, run.jobs.in_flight).pool)
            if self.initial is not None and run.name == DEFAULT_POOL:
                budget = self.s.host_max_processes  # the other pools' units hold their part of it
                room = None if budget is None else max(run.s.min_processes, budget - sum(
                    1 for s in states if s.occupied and s.pool != DEFAULT_POOL))
                target = min(run.s.clamp(self.initial), room if room is not None else self.initial)
                if target != self.initial:
                    log.warning("--processes %d clamped to %d (MIN_PROCESSES=%d, MAX_PROCESSES=%d%s)",
                                self.initial, target, run.s.min_processes, run.s.max_processes,
                                "" if room is None else f", room {room} under HOST_MAX_PROCESSES={budget}",
                                extra=event("clamped", target=target))
            log.info("starting with %d workers%s (adopted %d)", target, self._of(run), len(running),
                     extra=event("start", workers=len(running), target=target, dqagent_pool=run.name))
            self._act(run, mine, target, reason="startup", label=Reason.STARTUP)

    # -- one tick --------------------------------------------------------------------------------

    async def tick(self) -> float:
        """One check: read, decide (`dqagent.core.hoststep`), act, report. Returns the seconds until the next."""
        began = self.clock()
        for name in self.pauses.update(self.runs, self.s.pause_group):  # pause requests and expiries: decide now
            self.runs[name].due_s = -math.inf
        self.reporter.broker = self.s.broker  # a reload may switch between Redis and RabbitMQ
        try:
            demand = await self.probe.fetch_demand()
        except BrokerError as exc:
            return await self._broker_down(str(exc))
        self.reporter.redis_up()
        self._rejected(demand.rejected)
        self._rejected_now = demand.rejected
        self.reporter.note_ages(demand)
        if demand.orphaned:
            await self._recover(demand)
        states = await self.units.worker_states(brief=("ActiveEnterTimestamp", "MainPID"))  # (PIDs: the page)
        self._note_undeclared(states)
        await self.retire(states)
        now_s, now_us = self.clock(), self.wallclock() * 1e6
        several = len(self.runs) > 1
        self.watches = watch_pools(self.watches, {name: run.s.worker_hung_after_s for name, run in self.runs.items()},
                                   states, self.report_root, now_s)
        base = {name: Observed(now_s, now_us, demand_of(demand, run.s.queue_names) if several else demand,
                               of_pool(states, name), {}, Backoff(), loads=self.watches[name].loads,
                               hung=self.watches[name].hung) for name, run in self.runs.items()}
        for name, run in self.runs.items():
            self.reporter.note_units(base[name].units, run.jobs.in_flight, now_us, run.s.process_startup_delay_s)
        fleets: dict[str, FleetInput] = {}
        for name, run in self.runs.items():  # fleet mode: publish each due pool's record, read its fleet's
            if run.s.fleet and is_due(run.due_s, now_s, len(self.runs)):
                rules = Rules.from_settings(run.s, run.policy)
                try:
                    fleets[name] = await run.fleet.sync(run.s, observe(rules, self._observed(run, base[name])))
                except (BrokerError, ConfigError) as exc:  # like an unreadable demand: keep the workers
                    return await self._broker_down(str(exc))  # (ConfigError: a reload left this host without an id)
                self._rejected(fleets[name].view.rejected)
        broker_outage.broker_back(self)  # demand (and the fleet) read: BROKER_FAILURE no longer applies
        self.forecasts.sync(self.runs)  # PREDICTIVE: each due pool's forecast is asked before the step, told after
        forecasts = {name: self.forecasts.forecast(name, Rules.from_settings(run.s, run.policy),
                                                   self._observed(run, base[name]))
                     for name, run in self.runs.items()
                     if name in self.forecasts.pools and is_due(run.due_s, now_s, len(self.runs))}
        checks = await self._decide(base, fleets, forecasts)
        for name, check in checks.items():
            self.forecasts.after(name, base[name], forecasts.get(name), check)
            self.runs[name].memory = check.memory
            self.runs[name].due_s = now_s + check.next_read_s
        held = [c for c in checks.values() if c.verdict.holding]
        if checks:
            first = held[0] if held else next(iter(checks.values()))
            self.guard.note(first.verdict, first.seen.census.pool)
        for name, fleet in fleets.items():
            self.runs[name].fleet.remember(fleet, checks[name].share)
        await self._carry_out(checks, states, demand, began, base)
        self.completed = True
        wall = self.wallclock()  # (a pause's deadline: the check at which it expires)
        return max(0.0, min(self.pauses.next_check_s(name, wall, run.due_s - now_s) for name, run in self.runs.items()))

    async def _decide(self, base: Mapping[str, Observed], fleets: Mapping[str, FleetInput],
                      forecasts: Mapping[str, Forecast | None] | None = None) -> dict[str, Check]:
        """The host step for the pools due now (the others count at their current size); the host is read
        only when a scale-up asks for it. The jobs in flight and backoffs are taken as they are after each
        wait (a start's check may end meanwhile)."""
        def inputs() -> list[PoolInput]:
            return [PoolInput(name, Rules.from_settings(run.s, run.policy), self._observed(run, base[name]),
                              run.memory, run.priority, fleets.get(name),
                              due=is_due(run.due_s, base[name].now_s, len(self.runs)), retiring=run.retiring,
                              pause=self.pauses.get(name, base[name].now_us / 1e6),
                              forecast=(forecasts or {}).get(name))
                    for name, run in self.runs.items()]

        checks = decide_host(inputs(), self.s.host_max_processes)
        if isinstance(checks, NeedsHost):  # a scale-up: the guard reads the host, then the same decision
            host = await self.guard.read(self.s)
            checks = decide_host(inputs(), self.s.host_max_processes, host)
        assert not isinstance(checks, NeedsHost), "the step asks for the host only once"
        return checks

    def _observed(self, run: PoolRun, observed: Observed) -> Observed:
        """`observed` with a copy of the pool's jobs in flight and its backoff as they are now."""
        return replace(observed, in_flight=dict(run.jobs.in_flight), backoff=run.jobs.backoff,
                       start_s=run.jobs.start_s, starts=run.jobs.starts)  # (start_s: the schedule's pre-warm)

    async def _carry_out(self, checks: Mapping[str, Check], states: Sequence[UnitState], demand: Demand,
                         began: float, base: Mapping[str, Observed]) -> None:
        """Act on one check and report it: the decision lines, the jobs, the fleet record, STATUS=, the snapshot."""
        for name, check in checks.items():
            run = self.runs[name]
            pool, target = check.seen.census.pool, check.decision.target
            log.log(logging.DEBUG if check.routine else logging.INFO, "decision%s: %d -> %d workers (%s)",
                    self._of(run), pool, target,
                    "; ".join(x for x in (check.decision.reason, check.plan.stop_note) if x),
                    extra=event("decision", dqagent_pool=name, **check.fields))
            if not check.routine:
                self.history.decided(DecisionNote(self.wallclock(), name, pool, target, check.decision.reason))
            if check.budget is not None and check.label == Reason.HOST_BUDGET and check.plan.stop:
                log.info("pool %s gives way under HOST_MAX_PROCESSES=%s: %d -> %d workers, room to %s",
                         name, self.s.host_max_processes, pool, check.plan.pool - len(check.plan.stop),
                         ", ".join(check.budget.gave_way_to) or "other pools",
                         extra=event("budget_yield", dqagent_pool=name, workers=pool, target=target,
                                     dqagent_to_pools=",".join(check.budget.gave_way_to)))
            self._issue(run, check.plan, of_pool(states, name), check.decision.reason, check.label)
            several = len(self.runs) > 1
            notes = (check.verdict.status(), self._schedule_note(run, check.schedule))
            run.status = self.reporter.status_line(
                check.plan, of_pool(states, name), run.jobs.backoff.remaining_s(self.clock()),
                check.seen.obs.queue_length, check.next_read_s, note="; ".join(n for n in notes if n),
                pool=name if several else None, oldest_age_s=check.demand.oldest_age_s)
            run.status = self.pauses.status(name, run.status, self.wallclock())
        for name, check in checks.items():
            if check.share is not None:  # the pool this tick leaves, published for the other members at once
                plan, run = check.plan, self.runs[name]
                await run.fleet.publish(run.s, plan.pool + len(plan.start) - len(plan.stop),
                                        check.seen.obs.starting + len(plan.start))
        self.reporter.show(self._status_line())
        self.counters.decision_took(self.clock() - began)
        self._last_decision_s = self.wallclock()
        self._figures(base, checks)
        self._publish(self._snapshot(redis_up=True))

    def _status_line(self) -> str:
        """STATUS=: the default pool's line as before pools; with several, `pool: line` for each, joined by ` | `."""
        if len(self.runs) == 1:
            return self.default.status
        return " | ".join(f"{name}: {run.status}" for name, run in self.runs.items() if run.status)

    def _figures(self, base: Mapping[str, Observed], checks: Mapping[str, Check]) -> None:
        """Each pool's figures for the snapshot: its queues as read, its units with this tick's own starts and
        stops counted, and its budget share (kept from its last check when it was not due)."""
        for name, run in self.runs.items():
            c = census(base[name].units, run.jobs.in_flight)
            run.workers = WorkerCounts(running=c.running, starting=c.coming, stopping=c.going, failed=c.failing,
                                       desired=run.last_wanted)
            run.queues, run.units = base[name].demand.queues, tuple(base[name].units)
            outstanding = None if base[name].broker_down_since_s is not None else base[name].demand.outstanding
            self.history.add(name, Point(self.wallclock(), c.running, outstanding, run.last_wanted))
            check = checks.get(name)
            if check is not None:
                run.share = check.budget.share if check.budget is not None else None

    async def _broker_down(self, message: str) -> float:
        """Demand (or the fleet) unreadable: counted; each pool decides by BROKER_FAILURE and acts
        (`dqagent.agent.outage`); the next try after the backoff (or at the end of a grace period)."""
        self.completed = False
        self.counters.source_error(Source.REDIS)
        return await broker_outage.decide_without_broker(self, message)

    def _act(self, run: PoolRun, states: Sequence[UnitState], target: int, reason: str, label: str) -> Plan:
        """Adoption: reconcile toward `target` and issue the actions (a check's plan comes from the step)."""
        plan = reconcile(states, target, min_processes=run.s.min_processes, max_processes=run.s.max_processes,
                         in_flight=run.jobs.in_flight, backoff=run.jobs.backoff, now_s=self.clock())
        self._issue(run, plan, states, reason, label)
        return plan

    def _issue(self, run: PoolRun, plan: Plan, states: Sequence[UnitState], reason: str, label: str) -> None:
        """Hand a plan's actions to the pool's job table (which runs them in the background), counted and logged.

        `label` is the bounded metrics reason (`dqagent.core.snapshot.Reason`, or the policy's name).
        """
        run.last_wanted = plan.wanted
        for numbers, direction in ((plan.start, Direction.UP), (plan.stop, Direction.DOWN)):
            if numbers:
                self.counters.scale_action(direction, label, run.name)
        if plan.start:
            log.info("scale up%s by %d to %d: %s", self._of(run), len(plan.start), plan.pool + len(plan.start),
                     reason, extra=event("scale_up", workers=plan.pool, target=plan.pool + len(plan.start),
                                         dqagent_pool=run.name))
            run.jobs.start(plan.start, plan.reset, run.s.process_startup_delay_s, restart_baseline(states, plan),
                           stop_timeout_s(run.s))
        elif plan.held_by_backoff:
            log.debug("scale-up%s to %d held: backing off after failed starts", self._of(run), plan.wanted)
        if plan.stop:
            log.info("scale down%s by %d to %d: %s", self._of(run), len(plan.stop), plan.pool - len(plan.stop),
                     "; ".join(x for x in (reason, plan.stop_note) if x),
                     extra=event("scale_down", workers=plan.pool, target=plan.pool - len(plan.stop),
                                 dqagent_pool=run.name, stop_units=",".join(map(str, plan.stop)),
                                 stop_why=plan.stop_note, all_busy=int(plan.all_busy)))
            run.jobs.stop(plan.stop, stop_timeout_s(run.s))
        if plan.restart:
            restarted(self.watches.setdefault(run.name, Watch()), run.name, plan.restart, self.clock(),
                      run.s.worker_hung_after_s)
            self.counters.hung_restarts(run.name, len(plan.restart))
            run.jobs.restart(plan.restart, run.s.process_startup_delay_s, stop_timeout_s(run.s))

    async def _recover(self, demand: Demand) -> None:
        try:
            requeued = await self.probe.recover_orphans()
        except BrokerError as exc:
            log.warning("orphan recovery failed: %s", exc, extra=event("orphans_failed"))
            return
        log.warning("%d orphaned messages of dead workers found; %d requeued by Dramatiq's maintenance",
                    demand.orphaned, requeued,
                    extra=event("orphans_recovered", orphaned=demand.orphaned, requeued=requeued))

    def _redis_down(self, message: str, note: str = "keeping workers") -> float:
        # 2, 4, 8 ... s, capped at the larger of CHECK_INTERVAL and 30 s: quick to notice recovery,
        # never a tight loop against a dead server.
        failures = self.reporter.redis_failures + 1
        retry = min(max(self.s.check_interval_s, 30.0), MAX_BACKOFF_S, 2.0 ** min(failures, 10))
        self.reporter.redis_down(message, retry, note)
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

    def _snapshot(self, *, redis_up: bool) -> Snapshot:
        """Every pool's figures as of its last check (no queues while Redis is down), and the host's."""
        now = self.wallclock()
        pools = tuple(PoolFigures(name, run.policy.name, run.s.min_processes, run.s.max_processes, run.workers,
                                  run.queues if redis_up else (), priority=run.priority, share=run.share,
                                  schedule_floor=run.schedule.floor if run.schedule else None,
                                  schedule_ceiling=run.schedule.ceiling if run.schedule else None,
                                  pause=self.pauses.get(name, now), broker_failure=run.s.broker_failure,
                                  broker_failure_active=run.outage == run.s.broker_failure, units=run.units,
                                  history=self.history.points(name), forecast=self.forecasts.report(name),
                                  activity=activity(self.watches.get(name), run.workers))
                      for name, run in self.runs.items())
        return Snapshot(version=__version__, taken_at_s=self.wallclock(), redis_up=redis_up, pools=pools,
                        last_decision_s=self._last_decision_s, counters=self._frozen_counters(),
                        guard_holding=self._guard_holding(), host_max_processes=self.s.host_max_processes,
                        status_text=self.reporter.status_text,
                        broker_error="" if redis_up else self.reporter.redis_error, rejected=self._rejected_now,
                        decisions=self.history.decisions(), headroom=self.guard.last)

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

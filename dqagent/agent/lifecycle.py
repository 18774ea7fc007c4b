"""The agent's life cycle: the process around the loop (`dqagent.agent.loop`).

Adopt the workers systemd runs, READY, check until SIGTERM/SIGINT, then STOPPING; on
`systemctl stop dqagent` stop the workers and wait for them, on a restart leave them for the next
agent; exit for systemd to restart us when the system bus goes away. SIGHUP re-reads the settings
between two checks (`dqagent.agent.reload`). The watchdog is pinged only while checks keep their progress
deadline.

A check that raises an error no handler foresaw (a bug, or broker data no check caught) is logged with
its traceback once per distinct error, counted as `source="internal"`, and the loop goes on at the next
interval with the workers as they are: one bad value or one bug must not become a restart loop, which
would also drop the PID, the job table and the policy's memory. Such a check still counts as progress
for the watchdog, which is there for a loop that no longer comes round (a hang), not for one whose
check failed: systemd restarting the agent would not make the same check pass.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import signal
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dqagent.agent.forecasting import Forecasts
from dqagent.agent.loop import MAX_BACKOFF_S, Loop
from dqagent.agent.pausing import PauseBook
from dqagent.agent.pools import PoolRun
from dqagent.agent.reload import Reloader
from dqagent.broker.fleetstore import FleetCoordinator
from dqagent.core.demand import DemandProbe
from dqagent.core.policies import Policy
from dqagent.core.reconciler import Intent, has_foreign_job, stoppable
from dqagent.core.snapshot import Source
from dqagent.core.units import UnitState, of_pool
from dqagent.errors import (
    EXIT_OK,
    EXIT_UNAVAILABLE,
    BrokerError,
    BusConnectionError,
    SystemdError,
    SystemdTimeoutError,
)
from dqagent.report.logs import event
from dqagent.report.notify import Notifier
from dqagent.settings.config import Settings
from dqagent.settings.parsers import DEFAULT_POOL
from dqagent.settings.pools import Pool
from dqagent.settings.workercmd import startup_warnings
from dqagent.systemd.jobtable import JobTable, ScaleReport, UnitManager, scale_by, stop_timeout_s

if TYPE_CHECKING:  # imported only when a metrics setting is set (prometheus_client is slow to import)
    pass

__all__ = ["MAX_BACKOFF_S", "Agent", "ScaleReport", "UnitManager", "scale_by", "stop_timeout_s"]

log = logging.getLogger(__name__)


class Agent(Loop):
    """The process around the loop: adopt, READY, check until stopped, reload, watchdog, shutdown.
    Construct with real or fake collaborators."""

    def __init__(self, settings: Settings, units: UnitManager, probe: DemandProbe, notifier: Notifier,
                 policy: Policy, *, initial_processes: int | None = None,
                 clock: Callable[[], float] = time.monotonic, wallclock: Callable[[], float] = time.time,
                 watchdog_s: float | None = None,
                 own_unit: str = "dqagent.service", under_systemd: bool | None = None,
                 reloader: Reloader | None = None, fleet: FleetCoordinator | None = None,
                 pools: Sequence[Pool] = (), pool_policies: Mapping[str, Policy] | None = None,
                 pause_dir: Path | None = None) -> None:
        super().__init__(settings, units, probe, notifier, policy, initial_processes=initial_processes, clock=clock,
                         wallclock=wallclock, fleet=fleet, pools=pools, pool_policies=pool_policies)

        self.watchdog_s = watchdog_s
        self.own_unit = own_unit
        self.under_systemd = bool(os.environ.get("INVOCATION_ID")) if under_systemd is None else under_systemd
        self.stop_requested = asyncio.Event()
        #: SIGHUP (`systemctl reload dqagent`): re-read the settings between two checks (dqagent.agent.reload).
        self.reloader = reloader
        self.reload_requested = asyncio.Event()
        #: The loop must finish its current step before this monotonic time, or the watchdog starves.
        self._progress_deadline = math.inf
        if pause_dir is not None:  # `dqagent pause`'s requests and the pauses in force (dqagent.agent.pausing)
            self.pauses = PauseBook(pause_dir, wallclock)
            self.forecasts = Forecasts(pause_dir, clock, wallclock)  # PREDICTIVE's state files, beside pauses.json

    # -- life cycle ------------------------------------------------------------------------------

    async def run(self) -> int:
        """Adopt, send READY, tick until stopped; returns the exit status."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_stop_signal)
        loop.add_signal_handler(signal.SIGHUP, self.reload_requested.set)
        failed = self.start_exporter()
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
                    await self.apply_reload()
                delay = await self._check()
                self._progress_deadline = self.clock() + delay + self._tick_budget_s()
                await self._pause(delay, bus_lost)
        except (BusConnectionError, SystemdError) as exc:  # SystemdError here: before the loop ran
            # Leave the workers alone: systemd restarts us (Restart=on-failure) and we adopt them.
            log.error("lost systemd: %s; exiting for systemd to restart the agent", exc,
                      extra=event("bus_lost"))
            self._cancel_jobs()
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

    async def _check(self) -> float:
        """One check under its progress deadline; a failure of systemd or an unforeseen error is reported and
        retried after CHECK_INTERVAL (only a lost bus leaves the loop). Returns the seconds until the next."""
        try:
            delay: float = await self._guard(self.tick(), self._tick_budget_s())
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
            if self.completed:  # a check that found Redis down is no recovery from a failed one
                self.reporter.tick_ok()
        return delay

    async def _pause(self, delay_s: float, bus_lost: asyncio.Task[None]) -> None:
        """Wait for the next check, a stop, reload or pause request, or the loss of the bus (raised)."""
        stop = asyncio.create_task(self.stop_requested.wait())
        reload = asyncio.create_task(self.reload_requested.wait())
        pause = asyncio.create_task(self.pauses.wait_request())  # `dqagent pause`: taken at the next check, now
        done, _ = await asyncio.wait({stop, reload, pause, bus_lost}, timeout=delay_s,
                                     return_when=asyncio.FIRST_COMPLETED)
        stop.cancel()
        reload.cancel()
        pause.cancel()
        if bus_lost in done:
            raise BusConnectionError("system bus connection lost")

    def _on_stop_signal(self) -> None:
        """Only flags the stop; and asks systemd for time to finish the current step and the stops."""
        if not self.stop_requested.is_set():
            slowest = max(stop_timeout_s(run.s) for run in self.runs.values())
            self.notifier.extend_timeout(self._tick_budget_s() + slowest)
        self.stop_requested.set()

    async def apply_reload(self) -> None:
        """What SIGHUP triggers between two checks: re-read the settings (dqagent.agent.reload); keeps the PID,
        the workers and, on an invalid file, the old settings. READY=1 follows RELOADING=1 in both cases, then
        the answer."""
        self.reload_requested.clear()
        if self.reloader is None:
            log.warning("SIGHUP ignored: this agent was started without a settings source to re-read",
                        extra=event("reload_failed", key=""))
            return
        self.notifier.reloading()
        outcome = await self.reloader.reload(self.s, self.probe, self.pool_list())
        if outcome.policy is not None:
            self.probe = outcome.probe
            policies = {**outcome.pool_policies, DEFAULT_POOL: outcome.policy}
            self._apply_pools(outcome.pools or (Pool(DEFAULT_POOL, outcome.settings),), policies)
            self.forecasts.sync(self.runs)  # PREDICTIVE may have changed: saved when turned off, else saved below
            self._reload_exporter()
            self.guard.warn_missing(self.s)  # GUARD may have been turned on
        self.forecasts.save_all()
        self.notifier.ready()
        self.reloader.answer(outcome)

    def _apply_pools(self, pools: Sequence[Pool], policies: Mapping[str, Policy]) -> None:
        """A reload's pools, in memory only (no call that could fail half-way): a changed pool takes its new
        settings and policy (its memory kept unless the policy changed), a new pool starts at the next check,
        a removed pool retires: its workers stop gracefully from the next check on, and it is forgotten once
        they are gone (`PoolHost.retire`). Every pool decides at the next check."""
        wanted = {p.name: p for p in pools}
        for name, run in self.runs.items():
            if name not in wanted:
                if not run.retiring:
                    run.retiring = True
                    log.info("pool %s removed: its workers stop gracefully", name,
                             extra=event("pool_removed", dqagent_pool=name))
                continue
            if policies[name].name != run.policy.name:
                run.memory = replace(run.memory, policy_state=policies[name].initial_state())
            run.s, run.policy, run.due_s, run.retiring = wanted[name].settings, policies[name], -math.inf, False
        for pool in pools:
            if pool.name not in self.runs:
                log.info("pool %s added (%s): its workers start at the next check", pool.name, pool.source,
                         extra=event("pool_added", dqagent_pool=pool.name))
        self.add_pools(pools, policies)

    def _cancel_jobs(self) -> None:
        for jobs in self._job_tables():
            jobs.cancel()

    def _job_tables(self) -> list[JobTable]:
        return [run.jobs for run in self.runs.values()]

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

    def start_exporter(self) -> int | None:
        """Serve METRICS_ADDRESS / write METRICS_TEXTFILE when set; an exit status when it cannot listen."""
        if not (self.s.metrics_address or self.s.metrics_textfile):
            return None
        from dqagent.agent.statusview import page_source
        from dqagent.report.metrics import Exporter, MetricsError

        page = page_source(lambda: self.latest, lambda: self.s, self.pool_list)
        self.exporter = Exporter(lambda: self.latest, self.s.metrics_address, self.s.metrics_textfile, page)
        try:
            self.exporter.start()
        except MetricsError as exc:
            log.error("%s", exc, extra=event("metrics_error", error=str(exc)))
            return exc.exit_code
        return None

    def _reload_exporter(self) -> None:
        """A reload may set, change or clear METRICS_ADDRESS: listen again (a failure is logged, not fatal)."""
        if self.exporter is None:
            self.start_exporter()
            return
        if self.exporter.address == self.s.metrics_address:
            return
        from dqagent.report.metrics import MetricsError

        try:
            self.exporter.serve(self.s.metrics_address)
        except MetricsError as exc:
            log.error("%s", exc, extra=event("metrics_error", error=str(exc)))

    # -- stopping --------------------------------------------------------------------------------

    async def _shutdown(self) -> int:
        """Stop the workers only when the agent itself is being stopped, not restarted."""
        self.notifier.stopping()
        self.forecasts.save_all()  # (a restart or a reboot keeps the learning)
        if self.under_systemd:
            try:
                job = await self.units.pending_job_type(self.own_unit)
            except (SystemdError, BusConnectionError) as exc:
                log.warning("cannot read my own pending job (%s); leaving the workers running", exc,
                            extra=event("shutdown", job="unknown"))
                self._cancel_jobs()
                return EXIT_OK
            stop_workers_now = job == "stop"
        else:
            job = "terminal"
            stop_workers_now = True
        if not stop_workers_now:
            self._cancel_jobs()  # their systemd jobs run on; the next agent counts what they left
            states = await self.units.worker_states()
            occupied = sum(1 for s in states if s.occupied and s.pool in self.runs)
            log.info("agent %s: leaving %d workers running for the next agent", job or "exit", occupied,
                     extra=event("shutdown", workers=occupied, job=job))
            return EXIT_OK
        self.notifier.extend_timeout(self._stop_budget_s())
        for jobs in self._job_tables():
            await jobs.wait(Intent.START)  # a start in flight ends first, so its unit is stopped too
        states = await self.units.worker_states()
        ours = {name: self._ours(run, of_pool(states, name)) for name, run in self.runs.items()}
        log.info("agent stopping (%s): stopping %d workers gracefully", job, sum(map(len, ours.values())),
                 extra=event("shutdown", workers=sum(map(len, ours.values())), job=job))
        for run in self.runs.values():  # leave the fleets now: the others take this host's share at once
            if run.s.fleet:
                with contextlib.suppress(BrokerError):
                    await run.fleet.leave(run.s)
        for name, run in self.runs.items():
            run.jobs.stop([s.instance for s in ours[name]], stop_timeout_s(run.s))
        # Failed instances hold no process but stay listed; clear them so nothing is left behind.
        for s in states:
            if s.active_state == "failed" and not s.job_type and s.pool in self.runs:
                with contextlib.suppress(SystemdError):
                    await self.units.reset_failed(s.unit)
        for jobs in self._job_tables():
            await jobs.wait()
        return EXIT_OK

    def _ours(self, run: PoolRun, states: Sequence[UnitState]) -> list[UnitState]:
        """A pool's units the agent stops at its own stop: not those with an operator's job (logged), nor those
        it is already stopping."""
        flight = run.jobs.in_flight
        for s in states:
            if s.occupied and has_foreign_job(s, flight.get(s.instance)):
                log.warning("leaving %s alone: it has a %s job the agent did not start", s.unit, s.job_type,
                            extra=event("foreign_job", unit=s.unit, job=s.job_type))
        return stoppable(states, flight)

    def _stop_budget_s(self) -> float:
        """How long the stop may take: the slowest pool's graceful stop after a start's check."""
        return max(stop_timeout_s(run.s) + run.s.process_startup_delay_s for run in self.runs.values()) + 30

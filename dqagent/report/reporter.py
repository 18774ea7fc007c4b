"""What the agent tells the operator: the STATUS= line, and fault logs de-duplicated.

Each fault is logged when it starts (or its reason changes) and once when it ends, never once per
tick: a failing worker once per distinct reason, Redis once per outage, a systemd refusal once per
error name. STATUS= reports what systemd shows (running and wanted separately, the failing units),
not what was asked for.
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING

from dqagent.core.reconciler import Intent, Plan
from dqagent.core.snapshot import Accumulator
from dqagent.core.units import UnitState, worker_pool
from dqagent.report.logs import event
from dqagent.report.notify import Notifier

if TYPE_CHECKING:  # a type only: the reporter does not pull in redis
    from dqagent.core.demand import Demand
    from dqagent.core.untrusted import Rejection

log = logging.getLogger(__name__)

#: `systemd_error` while systemd does not answer (a timeout, not a D-Bus error name).
SYSTEMD_TIMEOUT = "timeout"
#: Failing units named in STATUS= before "and N more".
STATUS_UNITS = 3
#: Distinct rejected values and distinct unexpected errors remembered as logged (memory bound): past it, a new
#: one is logged at DEBUG only, so a stranger writing ever new keys cannot flood the journal either.
REMEMBERED = 1000


def _age(seconds: float | None) -> str:
    return "" if seconds is None else f", oldest {seconds:.0f}s"


def short(unit: str) -> str:
    """`dramatiq-worker@4.service` -> `dramatiq-worker@4`, as STATUS= shows it."""
    return unit.removesuffix(".service")


def failure_reason(state: UnitState) -> str:
    """Why a crashed unit is not serving, in systemd's words (its Result)."""
    return state.result if state.result and state.result != "success" else f"{state.active_state}/{state.sub_state}"


class Reporter:
    """Owns STATUS= and the memory of what has been logged. `notifier` None: logs only (the CLI)."""

    def __init__(self, notifier: Notifier | None = None, counters: Accumulator | None = None) -> None:
        self.notifier = notifier
        #: The loop's counters: the failures logged here are counted there (one place for every counter).
        self.counters = counters if counters is not None else Accumulator()
        #: The last STATUS= line sent ("" before the first).
        self.status_text = ""
        #: unit -> the failure reasons logged for it; dropped once the unit runs settled again.
        self._failing: dict[str, set[str]] = {}
        #: unit -> reason of its last failed start check (a unit the agent stopped after it is not listed).
        self._failed_starts: dict[str, str] = {}
        #: Reads that found a head message stamped in this host's future (age clamped to 0), in all.
        self.skewed_ages = 0
        self._skewed = False
        self._unreadable_logged = False
        #: The oldest waiting message's age at the last read (`note_ages`), for STATUS=.
        self.oldest_age_s: float | None = None
        self.redis_error = ""
        self.redis_failures = 0
        self.systemd_error = ""
        #: (kind, key, reason) of every broker value logged as rejected.
        self._rejections: set[tuple[str, str, str]] = set()
        #: Distinct unexpected tick errors logged with their traceback; failed ticks since the last good one.
        self._tick_errors: set[str] = set()
        self.tick_failures = 0

    def _status(self, line: str) -> None:
        self.status_text = line  # the status page shows it
        if self.notifier is not None:
            self.notifier.status(line)

    # -- workers -----------------------------------------------------------------------------

    def worker_failing(self, unit: str, reason: str, detail: str, **fields: object) -> None:
        """A worker is not serving: ERROR once per distinct reason while it fails, DEBUG after that.

        (A crash loop alternates between e.g. `exit-code` in RestartSec and running again: two lines.)
        """
        seen = self._failing.setdefault(unit, set())
        if reason in seen:
            log.debug("worker %s still failing: %s", unit, detail)
            return
        seen.add(reason)
        if reason == "oom-kill":  # past its MemoryMax (WORKER_MEMORY_MAX/POOL_MEMORY_MAX) or the host's memory
            self.counters.oom_killed()
            log.error("worker %s killed for memory (systemd Result=oom-kill): %s", unit, detail,
                      extra=event("worker_oom_killed", unit=unit, result=reason, oom_kills=self.counters.oom_kills,
                                  **fields))
            return
        log.error("worker %s failing: %s", unit, detail,
                  extra=event("worker_failed", unit=unit, result=reason, **fields))

    def start_failed(self, unit: str, reason: str, detail: str, **fields: object) -> None:
        """A start the agent made did not pass its PROCESS_STARTUP_DELAY check."""
        self.counters.start_failed()
        self._failed_starts[unit] = reason
        self.worker_failing(unit, reason, detail, **fields)

    def start_ok(self, unit: str) -> None:
        self._failed_starts.pop(unit, None)
        if self._failing.pop(unit, None) is not None:
            log.info("worker %s running again", unit, extra=event("worker_recovered", unit=unit))

    def note_units(self, states: Sequence[UnitState], in_flight: Mapping[int, Intent], now_us: float,
                   settle_s: float) -> None:
        """Log crashed units (failed, or auto-restart) the agent is not already checking itself.

        A failing unit counts as recovered once it has run `settle_s` (PROCESS_STARTUP_DELAY) without
        a restart, so a crash loop under systemd's own Restart= is not logged as recovered each cycle.
        """
        for s in states:
            if s.instance in in_flight:
                continue
            if s.crashed:
                restarting = s.sub_state == "auto-restart"
                self.worker_failing(s.unit, failure_reason(s),
                                    f"{s.active_state}/{s.sub_state}, result={s.result}, restarts={s.n_restarts}"
                                    + (", systemd restarts it" if restarting else ""),
                                    n_restarts=s.n_restarts)
            elif s.running and s.unit in self._failing and now_us - s.active_enter_us >= settle_s * 1e6:
                self.start_ok(s.unit)

    def status_line(self, plan: Plan, states: Sequence[UnitState], backoff_s: float, queue_length: int,
                    next_check_s: float, note: str = "", *, pool: str | None = None,
                    oldest_age_s: float | None = None) -> str:
        """E.g. `3 running of 4 wanted; dramatiq-worker@4 failing: exit-code; queue 12, next check in 1s`.

        `pool`: one pool's line (with several): only its own failed starts, and `oldest_age_s` of its own
        queues; otherwise the host's oldest age as of the last `note_ages`."""
        c = plan.census
        moving = [f"{n} {what}" for n, what in ((c.coming, "starting"), (c.going, "stopping")) if n]
        line = f"{c.running} running of {plan.wanted} wanted" + (f" ({', '.join(moving)})" if moving else "")
        failing = {s.unit: failure_reason(s) + (", restarting" if s.sub_state == "auto-restart" else "")
                   for s in states if s.crashed}
        if backoff_s > 0:
            failing.update({u: r for u, r in self._failed_starts.items()
                            if u not in failing and (pool is None or worker_pool(u) == pool)})
        if failing:
            named = [f"{short(u)} failing: {r}" for u, r in sorted(failing.items())[:STATUS_UNITS]]
            more = len(failing) - len(named)
            line += "; " + "; ".join(named) + (f" and {more} more" if more > 0 else "")
        if backoff_s > 0:
            line += f"; next start in {backoff_s:.0f}s"
        if note:  # e.g. the guard's hold
            line += f"; {note}"
        oldest = self._oldest() if pool is None else _age(oldest_age_s)
        return f"{line}; queue {queue_length}{oldest}, next check in {next_check_s:g}s"

    def show(self, line: str) -> None:
        """Send a STATUS= line built by the caller (several pools' `status_line`s)."""
        self._status(line)

    # -- the oldest message's age ----------------------------------------------------------------

    def _oldest(self) -> str:
        """`, oldest 42s` for STATUS= after `queue N`, from the last `note_ages()`; "" when no message waits."""
        return _age(self.oldest_age_s)

    def note_ages(self, demand: Demand) -> None:
        """Clock skew (a head message stamped in this host's future): counted, logged when it starts and
        ends; a head whose timestamp cannot be read (not Dramatiq's JSON encoder): logged once. Keeps the
        oldest age for STATUS=."""
        self.oldest_age_s = demand.oldest_age_s
        self.skewed_ages += demand.skewed
        if demand.skewed and not self._skewed:
            log.warning("a waiting message is stamped in this host's future: producer clocks ahead of this "
                        "host; its age counts as 0 (%d such reads so far)", self.skewed_ages,
                        extra=event("clock_skew", skewed=self.skewed_ages))
        elif self._skewed and not demand.skewed:
            log.info("no waiting message stamped in the future any more", extra=event("clock_skew_ended"))
        self._skewed = bool(demand.skewed)
        if demand.unreadable and not self._unreadable_logged:
            self._unreadable_logged = True
            log.warning("cannot read the oldest waiting message's age: Redis refused the script (an ACL without "
                        "EVAL?) or the body is not Dramatiq's JSON; no age, MAX_QUEUE_AGE cannot act on it",
                        extra=event("age_unreadable"))

    # -- untrusted broker data, unexpected errors -----------------------------------

    def rejected(self, rejections: Iterable[Rejection]) -> None:
        """Broker data skipped by a read: WARNING once per distinct (kind, key, reason), DEBUG after that."""
        for r in rejections:
            seen = (r.kind.value, r.key, r.reason)
            if seen in self._rejections or len(self._rejections) >= REMEMBERED:
                log.debug("broker data still rejected: %s %s: %s", r.kind, r.key, r.reason)
                continue
            self._rejections.add(seen)
            log.warning("skipped untrusted broker data: %s %s: %s", r.kind, r.key, r.reason,
                        extra=event("broker_data_rejected", kind=r.kind.value, key=r.key, reason=r.reason))

    def tick_failed(self, exc: BaseException, retry_s: float) -> None:
        """A tick raised an error no handler foresaw: its traceback logged once per distinct error (type,
        message and where it was raised), DEBUG after that; STATUS= says so until a tick succeeds."""
        self.tick_failures += 1
        tb = traceback.extract_tb(exc.__traceback__)
        where = f"{tb[-1].filename}:{tb[-1].lineno}" if tb else ""
        brief = f"{type(exc).__name__}: {' '.join(str(exc).split())[:200]}"
        if f"{brief} at {where}" in self._tick_errors or len(self._tick_errors) >= REMEMBERED:
            log.debug("check failed again: %s", brief)
        else:
            self._tick_errors.add(f"{brief} at {where}")
            log.error("check failed unexpectedly, keeping the current workers: %s", brief, exc_info=exc,
                      extra=event("tick_failed", error=brief, where=where))
        self._status(f"check failed ({brief[:80]}), keeping workers, retry in {retry_s:g}s")

    def tick_ok(self) -> None:
        """A tick completed: the unexpected failures logged before are over (logged once)."""
        if self.tick_failures:
            log.info("checks complete again after %d failed", self.tick_failures,
                     extra=event("tick_recovered", failures=self.tick_failures))
        self.tick_failures = 0

    # -- Redis and systemd ---------------------------------------------------------------------

    def redis_down(self, message: str, retry_s: float, note: str = "keeping workers") -> None:
        self.redis_failures += 1
        if not self.redis_error:
            log.error("redis unavailable (%s): %s", note, message,
                      extra=event("redis_error", error=message))
        elif self.redis_error != message:  # same outage, different wording: not a new event
            log.debug("redis still unavailable: %s", message)
        self.redis_error = message
        self._status(f"redis unavailable ({message[:80]}), {note}, retry in {retry_s:.0f}s")

    def redis_up(self) -> None:
        if self.redis_error:
            log.info("redis reachable again after %d failed checks", self.redis_failures,
                     extra=event("redis_ok"))
        self.redis_error = ""
        self.redis_failures = 0

    def systemd_refused(self, name: str, text: str, retry_s: float) -> None:
        if self.systemd_error != name:
            log.error("systemd refused a request, keeping the current workers: %s", text,
                      extra=event("systemd_error", error=name))
            self.systemd_error = name
        self._status(f"systemd refused a request ({name}), retry in {retry_s:g}s")

    def systemd_timeout(self, text: str, retry_s: float) -> None:
        """A tick's D-Bus call got no answer within DBUS_TIMEOUT (systemd busy or hung), not a refusal."""
        if self.systemd_error != SYSTEMD_TIMEOUT:
            log.warning("systemd did not answer in time, keeping the current workers: %s", text,
                        extra=event("systemd_timeout", error=text))
            self.systemd_error = SYSTEMD_TIMEOUT
        self._status(f"systemd not answering ({text[:80]}), retry in {retry_s:g}s")

    def systemd_ok(self) -> None:
        """A tick read systemd again: the refusal or timeout logged before is over (logged once)."""
        if self.systemd_error:
            log.info("systemd answering again", extra=event("systemd_ok", error=self.systemd_error))
        self.systemd_error = ""

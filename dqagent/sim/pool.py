"""The simulated pool's mechanics: its worker processes, the queue, the event clock, and what work costs.

What a worker does (the decisions about which ones to start and stop are the agent's, `dqagent.sim.agenttick`):
- each worker process has `threads` slots and holds up to `prefetch` unacked messages: the ones it holds but
  does not run yet are invisible to `LLEN` (ready) but count in outstanding;
- a started worker takes work only after its start-up delay (interpreter and app import);
- a stopped worker drains as Dramatiq 2.x does (`Worker.stop`: worker threads first, consumers kept alive for
  heartbeats, then the in-memory messages requeued): it starts no new task, finishes its running ones while
  its consumer keeps prefetching up to `prefetch`, and only when the last running task ends returns
  everything it holds to the queue tail and frees its slot; its process lives `stop_delay_s` more (and
  holds its instance number until then);
- an arriving message goes to the first worker with prefetch room or a random one (`first`, `random`);
  with `poll` the consumers fetch on their own schedule (`dqagent.sim.polling`).
"""

from __future__ import annotations

import bisect
import heapq
import math
import random
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from dqagent.sim.traces import Workload

if TYPE_CHECKING:
    from dqagent.sim.host import HostModel
    from dqagent.sim.poolconfig import PoolConfig

#: Event kinds: an arrival, a worker ready, a task done, the agent's read, a consumer's poll, a failed start, a
#: stopped worker's shutdown timeout.
ARRIVE, READY, DONE, TICK, POLL, FAIL, CUT = range(7)
#: The simulated wall clock (microseconds, as systemd's ActiveEnterTimestamp): simulated time 0 is this long
#: after the epoch, so a warm unit's 0 ("never", as a real agent reads it) is long before any check.
EPOCH_US = 2**40
#: A poll consumer's sleep (`dqagent.sim.polling`): awake, asleep with an exact next poll, phase forgotten.
AWAKE, FRESH, MIXED = 0, 1, 2


@dataclass(slots=True)
class Worker:
    """One worker process (one unit)."""

    wid: int
    started_s: float
    ready: bool = False
    stopping: bool = False
    running: int = 0
    #: The messages it runs (`running` of them), by index.
    tasks: set[int] = field(default_factory=set)
    held: deque[int] = field(default_factory=deque)  # prefetched, not running
    misses: int = 0  # "poll" dispatch: empty fetches since the last message (Dramatiq's backoff exponent)
    # "poll" dispatch, a consumer asleep after an empty fetch (no poll event pending): FRESH (its next poll
    # `due` is exact) or MIXED (phase forgotten); `nap` numbers its sleeps, `slept_s` when the last began.
    sleep: int = AWAKE
    due: float = 0.0
    nap: int = 0
    slept_s: float = 0.0
    #: The unit's instance number.
    number: int = 0
    #: When its start job ends (the unit is active from then; its ActiveEnterTimestamp, `active_enter_us`).
    job_end_s: float = 0.0
    active_enter_us: int = 0
    #: When the agent's start check ends: settled (stoppable) from then.
    checked_s: float = 0.0
    #: The start batch (one check's starts), judged together for the backoff.
    batch: int = 0
    ready_s: float = math.nan
    stopped_s: float = math.nan
    failed: bool = False


@dataclass(frozen=True, slots=True)
class Life:
    """One simulated worker from its start to its end (NaN: did not happen), to compare with a real run's units."""

    number: int
    started_s: float
    #: When the agent's start check ended (or, for a start that failed, when the unit ended).
    checked_s: float
    ready_s: float
    stopped_s: float
    ended_s: float
    failed: bool


def lookup(profile: tuple[tuple[float, float], ...], now: float, default: float) -> float:
    """The value of the (time, value) nearest to `now` (the earlier one on a tie); `default` if empty."""
    if not profile:
        return default
    i = bisect.bisect_right([t for t, _ in profile], now)
    if i == len(profile) or (i > 0 and now - profile[i - 1][0] <= profile[i][0] - now):
        i -= 1
    return profile[i][1]


class PollDispatch(Protocol):
    """What the pool asks of the `poll` dispatch model (`dqagent.sim.polling.Polling`), which attaches itself."""

    def forget(self, w: Worker, now: float) -> None: ...

    def gained_room(self, w: Worker, now: float) -> None: ...


class Pool:
    """The pool's state and what happens to it between the agent's checks. Same seed, same events."""

    def __init__(self, workload: Workload, cfg: PoolConfig, host: HostModel | None) -> None:
        n = len(workload)
        self.cfg = cfg
        self.host = host
        self.arrivals_s, self.services_s = workload.arrivals_s, workload.services_s
        self.events: list[tuple[float, int, int, int, int]] = []
        self.seq = 0
        self.queue: deque[int] = deque()
        self.workers: dict[int, Worker] = {}
        self.next_wid = 0
        self.started_at = [math.nan] * n
        self.completions = [0] * n
        #: Tasks cut short by a stopped worker's shutdown timeout (each runs again: `PoolConfig.shutdown_timeout_s`).
        self.reruns = 0
        self.cost = 0.0
        self.done_count = 0
        self.last_done = 0.0
        #: Instance number -> when its stopped process is gone (it holds the number until then).
        self.exiting: dict[int, float] = {}
        self.lives: list[Life] = []
        self.rng = random.Random(workload.seed) if cfg.dispatch != "first" else None
        #: The poll dispatch (None: `first` or `random`), set by `dqagent.sim.polling.Polling`.
        self.polling: PollDispatch | None = None

    def push(self, t: float, kind: int, a: int = 0, b: int = 0) -> None:
        self.seq += 1
        heapq.heappush(self.events, (t, self.seq, kind, a, b))

    def warm(self, count: int) -> None:
        """The initial pool: warm and settled, numbers 1..count."""
        for k in range(count):
            self.workers[k] = Worker(k, 0.0, ready=True, number=k + 1, ready_s=0.0)
            self.next_wid = k + 1

    def busy(self) -> int:
        return sum(1 for w in self.workers.values() if w.running)

    def begin(self, w: Worker, i: int, now: float) -> None:
        w.running += 1
        w.tasks.add(i)
        self.started_at[i] = now
        slow = self.host.slowdown(self.busy()) if self.host is not None else 1.0
        self.push(now + self.services_s[i] * slow, DONE, w.wid, i)

    def feed(self, w: Worker, now: float) -> None:
        """Fill running slots from the worker's buffer, then prefetch from the queue.

        A stopping worker's threads take nothing new, but its consumer still prefetches (Dramatiq stops
        consumers only after the worker threads): those messages wait in it until the drain ends.
        """
        if not w.ready:
            return
        self.run_held(w, now)
        if self.polling is None:
            self.fetch(w, now)

    def run_held(self, w: Worker, now: float) -> None:
        while not w.stopping and w.running < self.cfg.threads and w.held:
            self.begin(w, w.held.popleft(), now)

    def fetch(self, w: Worker, now: float) -> int:
        got = 0
        queue, cfg = self.queue, self.cfg
        while queue and w.running + len(w.held) < cfg.prefetch:
            i = queue.popleft()
            got += 1
            if not w.stopping and w.running < cfg.threads:
                self.begin(w, i, now)
            else:
                w.held.append(i)
        return got

    def dispatch(self, now: float) -> None:
        """`first`/`random`: the ready consumers take what waits (with `poll` they fetch on their own polls)."""
        if self.polling is not None:
            return
        takers = [w for w in self.workers.values() if w.ready]
        if self.rng is not None:
            self.rng.shuffle(takers)
        for w in takers:
            if not self.queue:
                break
            self.feed(w, now)

    def start(self, now: float, number: int, batch: int, job_s: float, check_s: float,
              fails_after_s: float | None) -> Worker:
        """Start unit `number`: its start job takes `job_s`, the agent's check `check_s` after it; a start that
        fails (`fails_after_s`) is never ready and ends that long after its start."""
        w = Worker(self.next_wid, now, batch=batch, number=number)
        self.workers[w.wid] = w
        boot = lookup(self.cfg.startup_profile_s, now, self.cfg.startup_delay_s)
        if fails_after_s is None:
            w.job_end_s = now + job_s
            w.checked_s = w.job_end_s + check_s
            self.push(now + boot, READY, w.wid)
        else:
            w.job_end_s = w.checked_s = now + fails_after_s  # judged when the unit ended: never ready
            self.push(w.checked_s, FAIL, w.wid)
        w.active_enter_us = EPOCH_US + round(w.job_end_s * 1e6)
        self.next_wid += 1
        return w

    def stop(self, w: Worker, now: float) -> None:
        w.stopping = True
        w.stopped_s = now
        if w.running == 0:
            self.finish_drain(w, now)
        elif self.cfg.shutdown_timeout_s is not None:
            self.push(now + self.cfg.shutdown_timeout_s, CUT, w.wid)

    def on_cut(self, wid: int, now: float) -> None:
        """A stopped worker's shutdown timeout: its running tasks are cut short and delivered again (at the
        queue's tail, as Dramatiq's requeue of an unacked message), then it drains as usual."""
        w = self.workers.get(wid)
        if w is None or not w.stopping or not w.running:
            return
        self.reruns += len(w.tasks)
        self.queue.extend(sorted(w.tasks))
        w.tasks.clear()
        w.running = 0
        self.finish_drain(w, now)
        self.dispatch(now)

    def finish_drain(self, w: Worker, now: float) -> None:
        """The last running task ended: requeue what it holds (RPUSH: the tail), free the slot; the process
        is paid for `stop_delay_s` more (its exit)."""
        self.queue.extend(w.held)
        w.held.clear()
        self.retire(w, now + self.cfg.stop_delay_s)

    def retire(self, w: Worker, now: float) -> None:
        self.cost += now - w.started_s
        if self.polling is not None:
            self.polling.forget(w, now)
        self.exiting[w.number] = now
        self.lives.append(Life(w.number, w.started_s, w.checked_s, w.ready_s, w.stopped_s, now, w.failed))
        del self.workers[w.wid]

    def on_ready(self, wid: int, now: float) -> None:
        starter = self.workers.get(wid)
        if starter is not None and not starter.ready:  # (the initial pool is ready from the start)
            starter.ready = True
            starter.ready_s = now
            self.feed(starter, now)
            if self.polling is not None:
                self.push(now, POLL, wid)

    def on_fail(self, wid: int, now: float) -> Worker:
        """A start that failed: the unit ended, never ready."""
        failed = self.workers[wid]
        failed.failed = True
        self.retire(failed, now)
        return failed

    def on_done(self, wid: int, i: int, now: float) -> None:
        w = self.workers.get(wid)
        if w is None or i not in w.tasks:
            return  # cut short at its worker's shutdown timeout (`on_cut`): it runs again elsewhere
        full = w.running + len(w.held) >= self.cfg.prefetch
        w.running -= 1
        w.tasks.discard(i)
        if self.polling is not None and w.sleep != AWAKE and full:
            self.polling.gained_room(w, now)
        self.completions[i] += 1
        self.done_count += 1
        self.last_done = now
        if w.stopping and w.running == 0:
            self.finish_drain(w, now)
            self.dispatch(now)  # the requeued messages go to the other consumers
        else:
            self.feed(w, now)

    def close(self, end_s: float) -> None:
        """Charge what still runs up to `end_s` (the work's end), as if retired then."""
        for w in list(self.workers.values()):
            self.retire(w, max(end_s, w.started_s))

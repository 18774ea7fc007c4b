"""Discrete-event model of one Dramatiq worker pool under a scaling policy.

What it models, because it is what makes policies differ on real pools:
- each worker process has `threads` slots and holds up to `prefetch` (2 x threads) unacked messages:
  the ones it holds but does not run yet are invisible to `LLEN` (ready) but count in outstanding;
- a started worker takes work only after `startup_delay_s` (interpreter and app import);
- a stopped worker drains as Dramatiq 2.x does (`Worker.stop`: worker threads first, consumers kept
  alive for heartbeats, then the in-memory messages requeued): it starts no new task, finishes its
  running ones while its consumer keeps prefetching up to `prefetch`, and only when the last running
  task ends returns everything it holds to the queue tail and frees its slot. It costs worker-seconds
  until then, and the policy sees it as going: not in `workers`, while what it holds stays in flight;
- the policy sees an `Observation` every `tick_s`; its decision is applied at once;
- with `agent_stops`, scale-down and failed starts follow the agent's reconciler and job table
  (`dqagent.core.reconciler`, `dqagent.systemd.jobtable`): a start is in flight until its start job ended and its
  PROCESS_STARTUP_DELAY check passed, and until then it is "starting" and cannot be stopped; a stop
  takes the highest-numbered settled workers (numbers reused lowest-free), ready or not, so a pool
  whose new workers are slow to boot can lose its ready ones; a start that failed in a real run fails
  here too, and the crash-loop backoff holds further starts;
- an arriving message goes to the first worker with prefetch room, or a random one, or (`poll`, as
  Dramatiq's Redis consumers do) waits in the list until some consumer's next poll fetches it: a
  consumer that just fetched polls again at once, one that found nothing backs off 5 ms x 2^misses
  (jitter x1..2) up to Dramatiq's `worker_timeout` (1 s, then 0.5..1 s), full or idle alike. A consumer
  whose fetch found nothing is not simulated poll by poll (see `simulate`'s "sleepers"); `poll-exact`
  does, as the reference the tests compare it with.

The real policy classes run unchanged through the `Policy` protocol. Same seed, same result.
"""

from __future__ import annotations

import bisect
import heapq
import math
import random
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from dqagent.core.policies import Observation, Policy, read_interval_s
from dqagent.core.reconciler import Backoff
from dqagent.sim.traces import Workload

if TYPE_CHECKING:
    from dqagent.core.guard import Limits
    from dqagent.sim.host import HostModel

_ARRIVE, _READY, _DONE, _TICK, _POLL, _FAIL, _JUDGE = 0, 1, 2, 3, 4, 5, 6
#: The dispatch models `PoolConfig.dispatch` accepts.
DISPATCH_MODELS = ("first", "random", "poll")
#: `poll` simulated one poll at a time, every idle consumer about once a second (its cost grows with idle
#: consumers x simulated time): the reference the fast `poll` is tested against; also accepted by `simulate`.
POLL_EXACT = "poll-exact"
#: A sleeping consumer's poll phase is tracked exactly for this long after it fell asleep, then forgotten
#: (taken as the cap's stationary phase: it reaches the cap within 2.6 s, and each capped poll brings the
#: phase about 0.4x closer to stationary). 8 s biased the mean wait of a busy 60-worker pool by +7 %
#: (what races forget adds up); at 20 and 30 s the difference was within noise (+-2.3 %), at about the
#: same CPU time.
SLEEP_EXACT_S = 30.0
_AWAKE, _FRESH, _MIXED = 0, 1, 2


@dataclass(frozen=True, slots=True)
class PoolConfig:
    """The pool being simulated (defaults: the seed's 5 threads, Dramatiq's 2 x threads prefetch)."""

    threads: int = 5
    prefetch: int = 10
    startup_delay_s: float = 5.0
    min_workers: int = 1
    max_workers: int = 10
    #: Whether the policy is fed `ready` (LLEN) or `outstanding` as its queue length.
    metric: str = "outstanding"
    #: Which worker with prefetch room takes an arrival: "first" (a busy consumer polls again at once
    #: while idle ones back off, so the same one keeps winning) or "random" (the consumers race evenly;
    #: seeded by the workload), or "poll" (each consumer fetches on its own poll schedule, Dramatiq's
    #: backoff; measured against real workers by dev/replay). A modelling assumption, so the benchmark
    #: can check each.
    dispatch: str = "first"
    #: The "poll" model's backoff: first step and cap (Dramatiq's `compute_backoff` factor, 5 ms, and
    #: `worker_timeout`, 1000 ms).
    poll_base_s: float = 0.005
    poll_max_s: float = 1.0
    #: Measured start-up delays as (start time, delay), times ascending, instead of `startup_delay_s`: a
    #: worker started at t takes the delay of the measured start nearest to t (the earlier one on a tie).
    #: A host's start-up latency follows its load over time, and the load rises with the very spike that
    #: makes the agent start workers: a model start a moment before the real one must not take the quiet
    #: delay of a start minutes earlier. dev/replay passes a real run's.
    startup_profile_s: tuple[tuple[float, float], ...] = ()
    #: Seconds a stopped worker process still lives (and costs) after its last task ended: Dramatiq's
    #: shutdown joins its threads (each wakes within `worker_timeout`) and the interpreter exits. 0: none.
    stop_delay_s: float = 0.0
    #: Stop as the agent's reconciler does (`dqagent.core.reconciler.reconcile`): only settled workers, those
    #: past their start check (start job, then `check_delay_s`), highest instance number first (numbers
    #: are reused lowest-free, as `_free_numbers` picks them), whether their process is ready or not; the
    #: policy's `starting` are the workers still in their check. False: the newest worker first, ready or
    #: not, and `starting` are the workers not ready yet (the benchmark's simplification; the same when
    #: the check ends as the worker gets ready).
    agent_stops: bool = False
    #: The agent's PROCESS_STARTUP_DELAY (its start check's wait after the start job); None: the start-up
    #: delay (the check ends as the worker gets ready). Only with `agent_stops`.
    check_delay_s: float | None = None
    #: Measured start job durations (start -> systemd's "Started", the worker binary executed) as
    #: (start time, seconds), looked up like `startup_profile_s`; empty: 0. Only with `agent_stops`.
    start_job_profile_s: tuple[tuple[float, float], ...] = ()
    #: Starts that failed in a real run, as (start time, seconds until the unit ended), times ascending:
    #: the first model start within `failure_match_s` of one fails the same way (never ready, ends after
    #: that time), once per real failure, and the agent's crash-loop backoff (`dqagent.core.reconciler.Backoff`)
    #: holds the next starts; reusing a failed unit's number counts as a failure, as in `dqagent.systemd.jobtable`.
    #: Only with `agent_stops`.
    failed_starts_s: tuple[tuple[float, float], ...] = ()
    failure_match_s: float = 1.25


@dataclass
class _Worker:
    wid: int
    started_s: float
    ready: bool = False
    stopping: bool = False
    running: int = 0
    held: deque[int] = field(default_factory=deque)  # prefetched, not running
    misses: int = 0  # "poll" dispatch: empty fetches since the last message (Dramatiq's backoff exponent)
    # "poll" dispatch, a consumer asleep after an empty fetch (no poll event pending): _FRESH (its next poll
    # `due` is exact) or _MIXED (phase forgotten); `nap` numbers its sleeps, `slept_s` when the last began.
    sleep: int = _AWAKE
    due: float = 0.0
    nap: int = 0
    slept_s: float = 0.0
    number: int = 0  # the unit's instance number (`agent_stops`)
    checked_s: float = 0.0  # when the agent's start check ends: settled (stoppable) from then (`agent_stops`)
    batch: int = 0  # the start batch (one reconcile's starts), judged together for the backoff
    ready_s: float = math.nan
    stopped_s: float = math.nan
    failed: bool = False


@dataclass(frozen=True, slots=True)
class Sample:
    """The pool at one policy tick, for plots."""

    t_s: float
    ready: int
    outstanding: int
    workers: int


@dataclass(frozen=True, slots=True)
class Life:
    """One simulated worker from its start to its end (NaN: did not happen), to compare with a real run's units."""

    number: int
    started_s: float
    #: When the agent's start check ended (`agent_stops`; else when it got ready).
    checked_s: float
    ready_s: float
    stopped_s: float
    ended_s: float
    failed: bool


@dataclass(frozen=True, slots=True)
class Result:
    """What one run produced; `metrics()` turns it into the table's figures."""

    policy: str
    waits_s: tuple[float, ...]
    completed: tuple[int, ...]
    worker_seconds: float
    scale_events: tuple[tuple[float, int], ...]
    samples: tuple[Sample, ...]
    burst_drain_s: tuple[float, ...]
    max_backlog: int
    end_s: float
    #: Every worker's life, in the order they ended (the still running ones last, ended at `end_s`).
    lives: tuple[Life, ...] = ()


def simulate(workload: Workload, policy: Policy, pool: PoolConfig, tick_s: float,
             initial_workers: int | None = None, horizon_s: float | None = None,
             host: HostModel | None = None, guard: Limits | None = None, adaptive_reads: bool = False,
             first_read_s: float = 0.0, read_times_s: Sequence[float] = ()) -> Result:
    """Run `workload` through a pool driven by `policy`. Returns every message's wait and the cost.

    `host` (dqagent.sim.host): a host that slows every task down beyond its capacity; `guard`: the
    agent's guard with these limits caps each scale-up by that host's CPU pressure (both optional).
    `tick_s` is the read interval; with `adaptive_reads` it is the base of the agent's adaptive one
    (`dqagent.core.policies.read_interval_s`, as SCALING_POLICY=target reads demand). `first_read_s`: when
    the policy reads first (the phase of its reads against the workload's clock; a real agent's is
    whatever it happens to be). `read_times_s` (ascending): read exactly then instead (a real agent's
    measured reads, replayed), and at the intervals after the last one.
    """
    n = len(workload)
    arrivals, services = workload.arrivals_s, workload.services_s
    events: list[tuple[float, int, int, int, int]] = []
    seq = 0

    def push(t: float, kind: int, a: int = 0, b: int = 0) -> None:
        nonlocal seq
        seq += 1
        heapq.heappush(events, (t, seq, kind, a, b))

    for i, t in enumerate(arrivals):
        push(t, _ARRIVE, i)
    end_arrivals = workload.trace.duration_s
    horizon = horizon_s if horizon_s is not None else end_arrivals + 6 * 3600
    reads = iter(read_times_s)
    push(next(reads, first_read_s), _TICK)

    queue: deque[int] = deque()
    if pool.dispatch not in (*DISPATCH_MODELS, POLL_EXACT):
        raise ValueError(f"dispatch: unknown {pool.dispatch!r}, expected one of {', '.join(DISPATCH_MODELS)}")
    polling = pool.dispatch in ("poll", POLL_EXACT)
    sleepers = pool.dispatch == "poll"
    # Misses after which every backoff is at the cap (poll_max_s x U(0.5, 1)): 8 at Dramatiq's 5 ms / 1 s.
    cap_misses = max(0, math.ceil(math.log2(pool.poll_max_s / pool.poll_base_s))) if polling else 0
    rng = random.Random(workload.seed) if pool.dispatch != "first" else None
    workers: dict[int, _Worker] = {}
    next_wid = 0
    started_at = [math.nan] * n
    completions = [0] * n
    cost = 0.0
    scale_events: list[tuple[float, int]] = []
    samples: list[Sample] = []
    state: Any = policy.initial_state()
    done_count = 0
    max_backlog = 0
    last_done = 0.0
    previous_outstanding: int | None = None

    agent = pool.agent_stops
    start_backoff = Backoff()
    failures_left = list(pool.failed_starts_s)
    exiting: dict[int, float] = {}  # instance number -> when its stopped process is gone (`agent_stops`)
    failed_numbers: set[int] = set()  # failed units: their numbers are reused after a reset (a failure)
    batch_failed: dict[int, bool] = {}  # start batches not judged yet: whether one of them failed
    batches = 0
    lives: list[Life] = []

    def startup_s(now: float) -> float:
        return _lookup(pool.startup_profile_s, now, pool.startup_delay_s)

    def free_number(now: float) -> int:
        used = {w.number for w in workers.values()} | {k for k, t in exiting.items() if t > now}
        return next(k for k in range(1, len(used) + 2) if k not in used)

    def start_worker(now: float, batch: int = 0) -> _Worker:
        nonlocal next_wid
        w = _Worker(next_wid, now, batch=batch)
        workers[next_wid] = w
        boot = startup_s(now)
        failed_after = None
        if agent:
            w.number = free_number(now)
            match = next((f for f in failures_left if abs(f[0] - now) <= pool.failure_match_s), None)
            if match is not None:
                failures_left.remove(match)
                failed_after = match[1]
            check = pool.check_delay_s
            w.checked_s = now + (boot if check is None else _lookup(pool.start_job_profile_s, now, 0.0) + check)
        if failed_after is None:
            push(now + boot, _READY, next_wid)
        else:
            w.checked_s = now + failed_after  # judged when the unit ended: never ready
            push(w.checked_s, _FAIL, next_wid)
        next_wid += 1
        return w

    def scale_up(now: float, count: int) -> None:
        """One reconcile's starts (a batch, judged together as `dqagent.systemd.jobtable` does)."""
        nonlocal start_backoff, batches
        batches += 1
        started = [start_worker(now, batches) for _ in range(count)]
        if not agent:
            return
        if failed_numbers & {w.number for w in started}:
            failed_numbers.difference_update(w.number for w in started)
            start_backoff = start_backoff.after_failure(now)  # "reusing failed unit(s)"
        batch_failed[batches] = False
        push(max(w.checked_s for w in started), _JUDGE, batches)

    def busy() -> int:
        return sum(1 for w in workers.values() if w.running)

    def begin(w: _Worker, i: int, now: float) -> None:
        w.running += 1
        started_at[i] = now
        push(now + services[i] * (host.slowdown(busy()) if host is not None else 1.0), _DONE, w.wid, i)

    def feed(w: _Worker, now: float) -> None:
        """Fill running slots from the worker's buffer, then prefetch from the queue.

        A stopping worker's threads take nothing new, but its consumer still prefetches (Dramatiq stops
        consumers only after the worker threads): those messages wait in it until the drain ends.
        """
        if not w.ready:
            return
        run_held(w, now)
        if not polling:
            fetch(w, now)

    def run_held(w: _Worker, now: float) -> None:
        while not w.stopping and w.running < pool.threads and w.held:
            begin(w, w.held.popleft(), now)

    def fetch(w: _Worker, now: float) -> int:
        got = 0
        while queue and w.running + len(w.held) < pool.prefetch:
            i = queue.popleft()
            got += 1
            if not w.stopping and w.running < pool.threads:
                begin(w, i, now)
            else:
                w.held.append(i)
        return got

    def backoff(w: _Worker) -> float:
        """Dramatiq's `compute_backoff` after an empty fetch (one more miss)."""
        assert rng is not None
        b: float = pool.poll_base_s * 2 ** min(w.misses, 32) * rng.uniform(1, 2)
        if b > pool.poll_max_s:
            b = pool.poll_max_s * rng.uniform(0.5, 1)
        w.misses += 1
        return b

    def poll(w: _Worker, now: float) -> None:
        """One `_RedisConsumer.__next__` fetch; the next poll at once after a hit, else after the backoff.

        With sleepers, a consumer that found nothing falls asleep instead of scheduling its next poll: it
        polls again only when a fetch could find something (`attend`)."""
        if fetch(w, now):
            w.misses = 0
            push(now, _POLL, w.wid)
            return
        due = now + backoff(w)
        if sleepers:
            fall_asleep(w, now, due)
        else:
            push(due, _POLL, w.wid)

    # Sleepers ("poll" dispatch). Every idle consumer at the backoff cap polls about 1.3 times a second, and
    # almost every poll of an idle pool finds nothing: simulated one by one (POLL_EXACT) they cost idle
    # consumers x simulated time. So a consumer whose fetch found nothing sleeps instead: no event until a
    # message waits and it has prefetch room. For SLEEP_EXACT_S after falling asleep its next poll (`due`)
    # is kept exact (advanced with the same backoff draws when a race needs it); by then its backoff is at
    # the cap (it reaches it within 2.6 s), a renewal process with poll_max_s x U(0.5, 1) between polls, and
    # its phase is forgotten: taken as the renewal's stationary one (residual density P(gap > r) / E[gap]).
    # When messages wait, the sleepers with room race: the first poll among k forgotten ones is drawn at
    # once as the minimum of k stationary residuals (P(> y) = S(y)^k, the winner uniform among them),
    # against the earliest exact `due`; the winner alone wakes. If messages still wait after its poll (a
    # backlog), every sleeper with room wakes. What it forgets: a race's losers did not poll before the
    # winner (their residuals are taken as stationary again), and an exact sleeper's phase after
    # SLEEP_EXACT_S. The tests compare it with POLL_EXACT (tests/unit/test_poll_dispatch.py).
    fresh_heap: list[tuple[float, int, int]] = []  # (due, wid, nap): exact sleepers with room
    fresh_order: deque[tuple[float, int, int]] = deque()  # (slept_s, wid, nap): every exact sleeper, oldest first
    mixed_room: list[_Worker] = []  # forgotten sleepers with room (index in `mixed_at`)
    mixed_at: dict[int, int] = {}
    mixed_full: dict[int, _Worker] = {}  # forgotten sleepers without room
    race_wid = -1  # the race winner whose poll is pending (-1: none)
    mean_gap = 0.75 * pool.poll_max_s

    def room(w: _Worker) -> bool:
        return w.running + len(w.held) < pool.prefetch

    def residual_s(k: int = 1) -> float:
        """The first poll of k forgotten sleepers: min of k stationary residuals of poll_max_s x U(0.5, 1)."""
        assert rng is not None
        # Stationary survival: S(y) = 1 - y / mean up to cap / 2 (S = 1/3 there), (cap - y)^2 / (cap x mean) above.
        survive: float = rng.random() ** (1.0 / k)
        if survive >= 1 / 3:
            return mean_gap * (1.0 - survive)
        return pool.poll_max_s * (1.0 - math.sqrt(0.75 * survive))

    def fall_asleep(w: _Worker, now: float, due: float) -> None:
        w.sleep, w.due, w.slept_s = _FRESH, due, now
        w.nap += 1
        fresh_order.append((now, w.wid, w.nap))
        if room(w):
            heapq.heappush(fresh_heap, (due, w.wid, w.nap))

    def is_fresh(w: _Worker | None, nap: int) -> bool:
        return w is not None and w.sleep == _FRESH and w.nap == nap

    def catch_up(w: _Worker, now: float) -> float:
        """An exact sleeper's first poll at or after `now` (its polls before it found nothing): the backoff
        draws of `backoff`, inlined (one draw at the cap: the same distribution)."""
        assert rng is not None
        due, misses, draw = w.due, w.misses, rng.random
        while due < now:
            if misses >= cap_misses:
                due += pool.poll_max_s * (0.5 + 0.5 * draw())
            else:
                b = pool.poll_base_s * 2 ** misses * (1.0 + draw())
                due += b if b <= pool.poll_max_s else pool.poll_max_s * (0.5 + 0.5 * draw())
            misses += 1
        w.due, w.misses = due, misses
        return due

    def wake(w: _Worker, at: float) -> None:
        """Take `w` out of the sleepers; its next poll at `at`."""
        if w.sleep == _MIXED:
            if w.wid in mixed_at:
                i = mixed_at.pop(w.wid)
                last = mixed_room.pop()
                if last is not w:
                    mixed_room[i] = last
                    mixed_at[last.wid] = i
            else:
                del mixed_full[w.wid]
        w.sleep = _AWAKE
        w.nap += 1  # voids its entries in fresh_heap and fresh_order
        push(at, _POLL, w.wid)

    def wake_now(w: _Worker, now: float) -> None:
        wake(w, catch_up(w, now) if w.sleep == _FRESH else now + residual_s())

    def forget_old(now: float) -> None:
        while fresh_order and fresh_order[0][0] <= now - SLEEP_EXACT_S:
            _, wid, nap = fresh_order.popleft()
            w = workers.get(wid)
            if w is not None and is_fresh(w, nap):
                w.sleep = _MIXED
                w.misses = max(w.misses, cap_misses)  # at the cap by now (only "at the cap or not" matters)
                if room(w):
                    mixed_at[wid] = len(mixed_room)
                    mixed_room.append(w)
                else:
                    mixed_full[wid] = w

    def earliest_fresh(now: float) -> _Worker | None:
        """The exact sleeper with room that polls first at or after `now`."""
        while fresh_heap:
            due, wid, nap = fresh_heap[0]
            w = workers.get(wid)
            if w is None or not is_fresh(w, nap) or due != w.due:
                heapq.heappop(fresh_heap)
            elif due < now:
                heapq.heapreplace(fresh_heap, (catch_up(w, now), wid, nap))
            else:
                return w
        return None

    def attend(now: float) -> None:
        """Messages wait and no race is pending: the sleepers with room race for them."""
        nonlocal race_wid
        if not queue or race_wid >= 0 or not (fresh_heap or mixed_room or fresh_order):
            return
        forget_old(now)
        first = earliest_fresh(now)
        if mixed_room:
            at = now + residual_s(len(mixed_room))
            if first is None or at < first.due:
                assert rng is not None
                first = mixed_room[rng.randrange(len(mixed_room))]
                race_wid = first.wid
                wake(first, at)
                return
        if first is not None:
            race_wid = first.wid
            wake(first, first.due)

    def wake_all(now: float) -> None:
        """A backlog: every sleeper with room polls on its own schedule."""
        forget_old(now)
        while (w := earliest_fresh(now)) is not None:
            wake(w, w.due)
        while mixed_room:
            wake_now(mixed_room[-1], now)

    def gained_room(w: _Worker, now: float) -> None:
        """A sleeper's task ended and it has prefetch room again: it may fetch at its next poll."""
        if w.sleep == _FRESH:
            heapq.heappush(fresh_heap, (w.due, w.wid, w.nap))
        elif w.wid in mixed_full:
            del mixed_full[w.wid]
            mixed_at[w.wid] = len(mixed_room)
            mixed_room.append(w)
        if queue:
            wake_now(w, now)

    def takers() -> list[_Worker]:
        """The workers whose consumers race for the queue, in dispatch order."""
        ws = [w for w in workers.values() if w.ready]
        if rng is not None:
            rng.shuffle(ws)
        return ws

    def dispatch(now: float) -> None:
        if polling:
            return  # the consumers fetch on their own polls
        for w in takers():
            if not queue:
                break
            feed(w, now)

    def retire(w: _Worker, now: float) -> None:
        nonlocal cost, race_wid
        cost += now - w.started_s
        if w.sleep != _AWAKE:
            wake(w, now)  # out of the sleepers; its poll finds no worker
        race_wid = -1 if race_wid == w.wid else race_wid
        exiting[w.number] = now
        lives.append(Life(w.number, w.started_s, w.checked_s if agent else w.ready_s, w.ready_s, w.stopped_s, now,
                          w.failed))
        del workers[w.wid]

    def stop_worker(w: _Worker, now: float) -> None:
        w.stopping = True
        w.stopped_s = now
        if w.running == 0:
            finish_drain(w, now)

    def finish_drain(w: _Worker, now: float) -> None:
        """The last running task ended: requeue what it holds (RPUSH: the tail), free the slot; the process
        is paid for `stop_delay_s` more (its exit)."""
        queue.extend(w.held)
        w.held.clear()
        retire(w, now + pool.stop_delay_s)

    for k in range(initial_workers if initial_workers is not None else pool.min_workers):
        workers[k] = _Worker(k, 0.0, ready=True, number=k + 1, ready_s=0.0)  # the initial pool is warm and settled
        next_wid = k + 1
    for w in list(workers.values()):
        if polling:
            push(0.0, _POLL, w.wid)

    now = 0.0
    while events:
        now, _, kind, a, b = heapq.heappop(events)
        if kind == _ARRIVE:
            queue.append(a)
            dispatch(now)
        elif kind == _READY:
            starter = workers.get(a)
            if starter is not None and not starter.ready:  # (the initial pool is ready from the start)
                starter.ready = True
                starter.ready_s = now
                feed(starter, now)
                if polling:
                    push(now, _POLL, a)
        elif kind == _FAIL:  # a start that failed: the unit ended, never ready; its number stays failed
            failed = workers[a]
            failed.failed = True
            failed_numbers.add(failed.number)
            batch_failed[failed.batch] = True
            retire(failed, now)
        elif kind == _JUDGE:  # the batch's checks all ended: back off after a failure, else note the success
            judged = start_backoff.after_failure if batch_failed.pop(a) else start_backoff.after_success
            start_backoff = judged(now)
        elif kind == _POLL:
            poller = workers.get(a)
            if poller is not None:
                poll(poller, now)
                if a == race_wid:
                    race_wid = -1
                    if queue:
                        wake_all(now)
                elif not queue:
                    # The race was for messages now fetched: its winner polls as scheduled, and the next
                    # message races among the sleepers of then (some may have fallen asleep since).
                    race_wid = -1
        elif kind == _DONE:
            w = workers[a]
            full = not room(w)
            w.running -= 1
            if w.sleep != _AWAKE and full:
                gained_room(w, now)
            completions[b] += 1
            done_count += 1
            last_done = now
            if w.stopping and w.running == 0:
                finish_drain(w, now)
                dispatch(now)  # the requeued messages go to the other consumers
            else:
                feed(w, now)
        else:  # _TICK
            if now > horizon or (now >= end_arrivals and done_count == n and not queue):
                break
            held = sum(w.running + len(w.held) for w in workers.values())
            active = [w for w in workers.values() if not w.stopping]
            ready = len(queue)
            outstanding = ready + held
            max_backlog = max(max_backlog, outstanding)
            starting = sum(1 for w in active if (w.checked_s > now if agent else not w.ready))
            obs = Observation(now_s=now, queue_length=outstanding if pool.metric == "outstanding" else ready,
                              ready=ready, in_flight=held, delayed=0, workers=len(active), starting=starting,
                              # The list head's wait since its arrival (Dramatiq's message_timestamp, the first
                              # enqueue: a requeued message keeps it and goes to the tail, as in `finish_drain`).
                              oldest_age_s=now - arrivals[queue[0]] if queue else None)
            decision, state = policy.decide(obs, state)
            target = max(pool.min_workers, min(pool.max_workers, decision.target))
            if host is not None and guard is not None:
                from dqagent.sim.host import guarded_target

                target = guarded_target(host, guard, len(active), target, pool.min_workers, busy())
            if target > len(active) and not start_backoff.holds(now):
                scale_up(now, target - len(active))
                scale_events.append((now, +1))
            elif target < len(active):
                # dqagent stops the highest instance numbers among the settled units (`agent_stops`);
                # else the newest first.
                victims = (sorted((w for w in active if w.checked_s <= now), key=lambda w: w.number, reverse=True)
                           if agent else sorted(active, key=lambda w: w.wid, reverse=True))[: len(active) - target]
                for w in victims:
                    stop_worker(w, now)
                if victims:
                    scale_events.append((now, -1))
                dispatch(now)
            samples.append(Sample(now, ready, outstanding, target))
            interval = read_interval_s(tick_s, obs, target, previous_outstanding) if adaptive_reads else tick_s
            previous_outstanding = outstanding
            push(next(reads, now + interval), _TICK)
        if sleepers:
            attend(now)
    # Charge what still runs up to the end of the work (the trace, or the last completion), so policies
    # that tick rarely are not billed for the idle tail after it.
    end = max(end_arrivals, last_done)
    for w in list(workers.values()):
        retire(w, max(end, w.started_s))

    waits = tuple(started_at[i] - arrivals[i] for i in range(n) if not math.isnan(started_at[i]))
    drains = tuple(max(started_at[i] for i in members) - arrivals[members[0]]
                   for members in workload.burst_members if members)
    return Result(policy.name, waits, tuple(completions), cost, tuple(scale_events), tuple(samples), drains,
                  max_backlog, end, tuple(lives))


def _lookup(profile: tuple[tuple[float, float], ...], now: float, default: float) -> float:
    """The value of the (time, value) nearest to `now` (the earlier one on a tie); `default` if empty."""
    if not profile:
        return default
    i = bisect.bisect_right([t for t, _ in profile], now)
    if i == len(profile) or (i > 0 and now - profile[i - 1][0] <= profile[i][0] - now):
        i -= 1
    return profile[i][1]


def oracle_worker_seconds(workload: Workload, pool: PoolConfig) -> float:
    """The oracle's cost: a clairvoyant pool where every message starts on arrival (zero wait), workers
    start instantly and tasks are packed perfectly, never below MIN.

    Integrates max(min_workers, ceil(busy_threads(t) / threads)) over the run: no zero-wait pool of
    whole workers can cost less.
    """
    points: list[tuple[float, int]] = []
    for a, s in zip(workload.arrivals_s, workload.services_s, strict=True):
        points += [(a, 1), (a + s, -1)]
    points.sort()
    busy, last, total = 0, 0.0, 0.0
    for t, delta in points:
        total += (t - last) * max(pool.min_workers, math.ceil(busy / pool.threads))
        busy += delta
        last = t
    end = max(last, workload.trace.duration_s)
    total += (end - last) * pool.min_workers
    return total

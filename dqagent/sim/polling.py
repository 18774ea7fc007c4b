"""The `poll` dispatch: each consumer fetches on its own schedule, as Dramatiq's Redis consumers do.

A consumer that just fetched polls again at once; one that found nothing backs off 5 ms x 2^misses (jitter
x1..2) up to Dramatiq's `worker_timeout` (1 s, then 0.5..1 s), full or idle alike. `poll-exact` simulates
every poll (`sleepers` off): the reference the fast `poll` is tested against.

Sleepers (`poll`). Every idle consumer at the backoff cap polls about 1.3 times a second, and almost every
poll of an idle pool finds nothing: simulated one by one they cost idle consumers x simulated time. So a
consumer whose fetch found nothing sleeps instead: no event until a message waits and it has prefetch room.
For SLEEP_EXACT_S after falling asleep its next poll (`due`) is kept exact (advanced with the same backoff
draws when a race needs it); by then its backoff is at the cap (it reaches it within 2.6 s), a renewal
process with poll_max_s x U(0.5, 1) between polls, and its phase is forgotten: taken as the renewal's
stationary one (residual density P(gap > r) / E[gap]). When messages wait, the sleepers with room race: the
first poll among k forgotten ones is drawn at once as the minimum of k stationary residuals (P(> y) = S(y)^k,
the winner uniform among them), against the earliest exact `due`; the winner alone wakes. If messages still
wait after its poll (a backlog), every sleeper with room wakes. What it forgets: a race's losers did not poll
before the winner (their residuals are taken as stationary again), and an exact sleeper's phase after
SLEEP_EXACT_S. The tests compare it with `poll-exact` (tests/unit/test_poll_dispatch.py).
"""

from __future__ import annotations

import heapq
import math
from collections import deque

from dqagent.sim.pool import AWAKE, FRESH, MIXED, POLL, Pool, Worker

#: A sleeping consumer's poll phase is tracked exactly for this long after it fell asleep, then forgotten
#: (taken as the cap's stationary phase: it reaches the cap within 2.6 s, and each capped poll brings the
#: phase about 0.4x closer to stationary). 8 s biased the mean wait of a busy 60-worker pool by +7 %
#: (what races forget adds up); at 20 and 30 s the difference was within noise (+-2.3 %), at about the
#: same CPU time.
SLEEP_EXACT_S = 30.0


class Polling:
    """The consumers' polls and the sleepers of one pool (attached to it as `pool.polling`)."""

    def __init__(self, pool: Pool, sleepers: bool) -> None:
        assert pool.rng is not None
        self.pool = pool
        self.rng = pool.rng
        self.sleepers = sleepers
        cfg = pool.cfg
        self.base_s, self.max_s, self.prefetch = cfg.poll_base_s, cfg.poll_max_s, cfg.prefetch
        # Misses after which every backoff is at the cap (poll_max_s x U(0.5, 1)): 8 at Dramatiq's 5 ms / 1 s.
        self.cap_misses = max(0, math.ceil(math.log2(cfg.poll_max_s / cfg.poll_base_s)))
        self.fresh_heap: list[tuple[float, int, int]] = []  # (due, wid, nap): exact sleepers with room
        self.fresh_order: deque[tuple[float, int, int]] = deque()  # (slept_s, wid, nap): exact sleepers, oldest first
        self.mixed_room: list[Worker] = []  # forgotten sleepers with room (index in `mixed_at`)
        self.mixed_at: dict[int, int] = {}
        self.mixed_full: dict[int, Worker] = {}  # forgotten sleepers without room
        self.race_wid = -1  # the race winner whose poll is pending (-1: none)
        self.mean_gap = 0.75 * cfg.poll_max_s
        pool.polling = self

    def room(self, w: Worker) -> bool:
        return w.running + len(w.held) < self.prefetch

    def backoff(self, w: Worker) -> float:
        """Dramatiq's `compute_backoff` after an empty fetch (one more miss)."""
        b: float = self.base_s * 2 ** min(w.misses, 32) * self.rng.uniform(1, 2)
        if b > self.max_s:
            b = self.max_s * self.rng.uniform(0.5, 1)
        w.misses += 1
        return b

    def on_poll(self, wid: int, now: float) -> None:
        """A consumer's poll event (it may have ended since it was scheduled)."""
        poller = self.pool.workers.get(wid)
        if poller is None:
            return
        self.poll(poller, now)
        if wid == self.race_wid:
            self.race_wid = -1
            if self.pool.queue:
                self.wake_all(now)
        elif not self.pool.queue:
            # The race was for messages now fetched: its winner polls as scheduled, and the next
            # message races among the sleepers of then (some may have fallen asleep since).
            self.race_wid = -1

    def poll(self, w: Worker, now: float) -> None:
        """One `_RedisConsumer.__next__` fetch; the next poll at once after a hit, else after the backoff.

        With sleepers, a consumer that found nothing falls asleep instead of scheduling its next poll: it
        polls again only when a fetch could find something (`attend`)."""
        if self.pool.fetch(w, now):
            w.misses = 0
            self.pool.push(now, POLL, w.wid)
            return
        due = now + self.backoff(w)
        if self.sleepers:
            self.fall_asleep(w, now, due)
        else:
            self.pool.push(due, POLL, w.wid)

    def forget(self, w: Worker, now: float) -> None:
        """`w` ends: out of the sleepers (its poll finds no worker), and out of a pending race."""
        if w.sleep != AWAKE:
            self.wake(w, now)
        if self.race_wid == w.wid:
            self.race_wid = -1

    def residual_s(self, k: int = 1) -> float:
        """The first poll of k forgotten sleepers: min of k stationary residuals of poll_max_s x U(0.5, 1)."""
        # Stationary survival: S(y) = 1 - y / mean up to cap / 2 (S = 1/3 there), (cap - y)^2 / (cap x mean) above.
        survive: float = self.rng.random() ** (1.0 / k)
        if survive >= 1 / 3:
            return self.mean_gap * (1.0 - survive)
        return self.max_s * (1.0 - math.sqrt(0.75 * survive))

    def fall_asleep(self, w: Worker, now: float, due: float) -> None:
        w.sleep, w.due, w.slept_s = FRESH, due, now
        w.nap += 1
        self.fresh_order.append((now, w.wid, w.nap))
        if self.room(w):
            heapq.heappush(self.fresh_heap, (due, w.wid, w.nap))

    def catch_up(self, w: Worker, now: float) -> float:
        """An exact sleeper's first poll at or after `now` (its polls before it found nothing): the backoff
        draws of `backoff`, inlined (one draw at the cap: the same distribution)."""
        due, misses, draw = w.due, w.misses, self.rng.random
        cap_misses, base_s, max_s = self.cap_misses, self.base_s, self.max_s
        while due < now:
            if misses >= cap_misses:
                due += max_s * (0.5 + 0.5 * draw())
            else:
                b = base_s * 2 ** misses * (1.0 + draw())
                due += b if b <= max_s else max_s * (0.5 + 0.5 * draw())
            misses += 1
        w.due, w.misses = due, misses
        return due

    def wake(self, w: Worker, at: float) -> None:
        """Take `w` out of the sleepers; its next poll at `at`."""
        if w.sleep == MIXED:
            if w.wid in self.mixed_at:
                i = self.mixed_at.pop(w.wid)
                last = self.mixed_room.pop()
                if last is not w:
                    self.mixed_room[i] = last
                    self.mixed_at[last.wid] = i
            else:
                del self.mixed_full[w.wid]
        w.sleep = AWAKE
        w.nap += 1  # voids its entries in fresh_heap and fresh_order
        self.pool.push(at, POLL, w.wid)

    def wake_now(self, w: Worker, now: float) -> None:
        self.wake(w, self.catch_up(w, now) if w.sleep == FRESH else now + self.residual_s())

    def forget_old(self, now: float) -> None:
        order, workers = self.fresh_order, self.pool.workers
        while order and order[0][0] <= now - SLEEP_EXACT_S:
            _, wid, nap = order.popleft()
            w = workers.get(wid)
            if w is not None and w.sleep == FRESH and w.nap == nap:
                w.sleep = MIXED
                w.misses = max(w.misses, self.cap_misses)  # at the cap by now (only "at the cap or not" matters)
                if self.room(w):
                    self.mixed_at[wid] = len(self.mixed_room)
                    self.mixed_room.append(w)
                else:
                    self.mixed_full[wid] = w

    def earliest_fresh(self, now: float) -> Worker | None:
        """The exact sleeper with room that polls first at or after `now`."""
        heap, workers = self.fresh_heap, self.pool.workers
        while heap:
            due, wid, nap = heap[0]
            w = workers.get(wid)
            if w is None or w.sleep != FRESH or w.nap != nap or due != w.due:
                heapq.heappop(heap)
            elif due < now:
                heapq.heapreplace(heap, (self.catch_up(w, now), wid, nap))
            else:
                return w
        return None

    def attend(self, now: float) -> None:
        """Messages wait and no race is pending: the sleepers with room race for them."""
        if not self.pool.queue or self.race_wid >= 0 or not (self.fresh_heap or self.mixed_room or self.fresh_order):
            return
        self.forget_old(now)
        first = self.earliest_fresh(now)
        if self.mixed_room:
            at = now + self.residual_s(len(self.mixed_room))
            if first is None or at < first.due:
                first = self.mixed_room[self.rng.randrange(len(self.mixed_room))]
                self.race_wid = first.wid
                self.wake(first, at)
                return
        if first is not None:
            self.race_wid = first.wid
            self.wake(first, first.due)

    def wake_all(self, now: float) -> None:
        """A backlog: every sleeper with room polls on its own schedule."""
        self.forget_old(now)
        while (w := self.earliest_fresh(now)) is not None:
            self.wake(w, w.due)
        while self.mixed_room:
            self.wake_now(self.mixed_room[-1], now)

    def gained_room(self, w: Worker, now: float) -> None:
        """A sleeper's task ended and it has prefetch room again: it may fetch at its next poll."""
        if w.sleep == FRESH:
            heapq.heappush(self.fresh_heap, (w.due, w.wid, w.nap))
        elif w.wid in self.mixed_full:
            del self.mixed_full[w.wid]
            self.mixed_at[w.wid] = len(self.mixed_room)
            self.mixed_room.append(w)
        if self.pool.queue:
            self.wake_now(w, now)

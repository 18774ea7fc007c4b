"""The broker demand probe: the only module that reads Dramatiq's Redis broker.

What it reads, per queue `Q` in namespace `ns` (see Dramatiq's `brokers/redis/dispatch.lua`):

- ready: `LLEN ns:Q`, the ids waiting in the list. Blind to messages a worker has prefetched.
- outstanding: `HLEN ns:Q.msgs`, every message not yet acked: ready + prefetched + running
  (+ orphaned, see below). This is the real backlog.
- delayed: `HLEN ns:Q.DQ.msgs`. The due time lives only inside each body, so it is not scanned for.
- dead: `ZCARD ns:Q.XQ`, dead-lettered messages (Dramatiq purges them after 7 days).
- orphaned: the members of the ack sets `ns:__acks__.<broker_id>.Q` and `....Q.DQ` of every broker
  instance whose heartbeat in `ns:__heartbeats__` is at least Dramatiq's heartbeat timeout old: messages a
  dead worker fetched and never acked. They are still in `Q.msgs` (or `Q.DQ.msgs`), so they are already
  part of outstanding (or delayed); Dramatiq puts them back in the list only during its "maintenance".
  `__heartbeats__` has one entry per broker instance, producers included: it is never a worker count.

Round trips per `fetch_demand()`: one pipeline of four O(1) commands per queue plus one
`ZRANGEBYSCORE` for the stale heartbeats; a second pipeline of two `SCARD`s per stale broker and queue
only when there are stale heartbeats. A pipeline cannot use the result of its own commands, and the
alternative (a Lua script that walks the ack sets) would be our own broker-side code to keep in step with
Dramatiq's; stale heartbeats are few (Dramatiq's maintenance removes a dead broker's entry once its ack
sets are gone), so the second trip is rare and small.

"Stale" uses this host's clock, as Dramatiq's maintenance does with the clock of the process that calls
it: `recover_orphans()` runs that maintenance from this process, so what is counted is what it recovers.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol, TypeVar
from urllib.parse import quote, unquote, urlsplit

import redis
import redis.asyncio
import redis.asyncio.retry
import redis.exceptions
import redis.retry
from dramatiq.brokers.redis import DEFAULT_HEARTBEAT_TIMEOUT, MAINTENANCE_SCALE, RedisBroker
from redis.backoff import NoBackoff

from dqagent.config import QueueMetric, Settings
from dqagent.errors import BrokerError

#: Dramatiq's own heartbeat timeout: a broker silent this long is dead, and its ack sets are orphans.
#: dqagent never changes it (a shorter one would requeue the messages of live, busy workers).
HEARTBEAT_TIMEOUT_MS: int = DEFAULT_HEARTBEAT_TIMEOUT

_DELAY_SUFFIX = ".DQ"
_T = TypeVar("_T")
_AUTH_ERRORS = (
    redis.exceptions.AuthenticationError, redis.exceptions.AuthorizationError,
    redis.exceptions.NoPermissionError, redis.exceptions.AuthenticationWrongNumberOfArgsError,
)


@dataclass(frozen=True, slots=True)
class QueueDemand:
    """What one Dramatiq queue holds at one instant (counts of messages)."""

    queue: str
    #: Ids waiting in the list (`LLEN Q`).
    ready: int
    #: Not yet acked: ready + prefetched + running + orphaned (`HLEN Q.msgs`).
    outstanding: int
    #: Waiting for their due time in the delay queue (`HLEN Q.DQ.msgs`).
    delayed: int
    #: Dead-lettered (`ZCARD Q.XQ`).
    dead: int
    #: Held by brokers whose heartbeat is older than the timeout, in `Q` and `Q.DQ` ack sets.
    orphaned: int
    #: Seconds the oldest ready message has waited; None: empty queue (or not read).
    oldest_age_s: float | None = None

    @property
    def in_flight(self) -> int:
        """Fetched by a worker and not acked yet: prefetched, running or orphaned."""
        return max(0, self.outstanding - self.ready)


@dataclass(frozen=True, slots=True)
class Demand:
    """The demand over every configured queue; the figures are sums over `queues`."""

    queues: tuple[QueueDemand, ...]

    @property
    def ready(self) -> int:
        return sum(q.ready for q in self.queues)

    @property
    def outstanding(self) -> int:
        return sum(q.outstanding for q in self.queues)

    @property
    def in_flight(self) -> int:
        return sum(q.in_flight for q in self.queues)

    @property
    def delayed(self) -> int:
        return sum(q.delayed for q in self.queues)

    @property
    def dead(self) -> int:
        return sum(q.dead for q in self.queues)

    @property
    def orphaned(self) -> int:
        return sum(q.orphaned for q in self.queues)

    def queue_length(self, metric: QueueMetric) -> int:
        """The figure the scaling rule compares with its thresholds.

        `OUTSTANDING` is the sum of `outstanding`; orphans of `Q` are inside it already (they stay in
        `Q.msgs`), so nothing is added for them. `READY` is the sum of `ready` and does not include
        orphans either: they join the list, and so this figure, once `recover_orphans()` has run.
        Delayed and dead-lettered messages are demand for neither.
        """
        if metric is QueueMetric.READY:
            return self.ready
        return self.outstanding


class DemandProbe(Protocol):
    """Reads the broker's demand and returns orphaned messages to their queues."""

    async def fetch_demand(self) -> Demand:
        """The current demand of every configured queue. Raises `BrokerError`."""
        ...

    async def recover_orphans(self) -> int:
        """Requeue orphaned messages; how many went back. Raises `BrokerError`."""
        ...

    async def close(self) -> None:
        """Release connections; the probe is not used afterwards."""
        ...


class RedisDemandProbe:
    """`DemandProbe` on Dramatiq's Redis broker.

    Every Redis call is bounded by `settings.redis_timeout_s` (connect and socket timeouts, and no
    client-side retries: the agent loop owns the retry policy), and each public call as a whole by the same
    deadline. Every failure becomes a one-line `BrokerError` naming `Settings.redis_location()`, never the
    password.
    """

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._timeout_s = settings.redis_timeout_s
        self._client = _async_client(settings)
        self._broker: RedisBroker | None = None
        self._broker_lock = threading.Lock()

    async def fetch_demand(self) -> Demand:
        """One pipelined read of every configured queue (two when a heartbeat is stale).

        Raises `BrokerError` when Redis is down, slow past the timeout, refuses auth, or answers an error.
        """
        demand, _ = await self._guard(self._read())
        return demand

    async def recover_orphans(self) -> int:
        """Run Dramatiq's own maintenance for each queue (or `.DQ`) that holds orphans.

        The maintenance is Dramatiq's Lua dispatch, called through a private `RedisBroker` with
        `maintenance_chance=MAINTENANCE_SCALE` (so it always runs) and the default heartbeat timeout. It
        requeues the ack sets of dead brokers at the tail of the list they came from, drops heartbeats of
        dead brokers left without ack sets, and purges dead letters older than Dramatiq's 7-day TTL, as
        any worker's maintenance does. No queue is declared: Redis has no registry of queues and nothing
        is written for a queue without orphans (it is not called for them). The call leaves this probe's
        own heartbeat entry, which is removed at once. Cost in Redis: Dramatiq's maintenance runs a `KEYS`
        per dead broker, so it is only triggered for the queues that hold orphans, not every tick.

        The whole call (count, maintenance, count again) has one deadline of `redis_timeout_s`. The
        maintenance runs in a thread (Dramatiq's broker is blocking); if the deadline passes, that thread
        still ends by itself within its socket timeouts, and a Lua call it already sent completes
        atomically in Redis or not at all.

        Returns how many orphans went back (orphans counted before minus after). Raises `BrokerError`.
        """
        return await self._guard(self._recover())

    async def close(self) -> None:
        """Close the Redis connections (the async client's and the maintenance broker's)."""
        await self._client.aclose()
        with self._broker_lock:
            broker, self._broker = self._broker, None
        if broker is not None:
            broker.close()
            await asyncio.to_thread(broker.client.close)

    async def _guard(self, work: Awaitable[_T]) -> _T:
        try:
            async with asyncio.timeout(self._timeout_s):
                return await work
        except (redis.RedisError, OSError) as exc:  # TimeoutError is an OSError
            raise BrokerError(describe_failure(exc, self._settings)) from None

    async def _recover(self) -> int:
        _, before = await self._read()
        targets = [name for name, n in before.items() if n]
        if not targets:
            return 0
        broker_id = await asyncio.to_thread(self._run_maintenance, targets)
        # Our maintenance broker never fetches, so it has no ack set: its heartbeat entry is noise that
        # would otherwise go stale and cost every later read a second round trip.
        await self._client.zrem(f"{self._settings.namespace}:__heartbeats__", broker_id)
        _, after = await self._read()
        return max(0, sum(before.values()) - sum(after.values()))

    async def _read(self) -> tuple[Demand, dict[str, int]]:
        """The demand and the orphan count per dispatch queue name (`Q` and `Q.DQ`)."""
        ns = self._settings.namespace
        queues = self._settings.queue_names
        cutoff_ms = int(time.time() * 1000) - HEARTBEAT_TIMEOUT_MS
        async with self._client.pipeline(transaction=False) as pipe:
            for q in queues:
                pipe.llen(f"{ns}:{q}")
                pipe.hlen(f"{ns}:{q}.msgs")
                pipe.hlen(f"{ns}:{q}{_DELAY_SUFFIX}.msgs")
                pipe.zcard(f"{ns}:{q}.XQ")
            # The same range Dramatiq's maintenance takes: scores 0 .. now - timeout, inclusive.
            pipe.zrangebyscore(f"{ns}:__heartbeats__", 0, cutoff_ms)
            replies: list[Any] = await pipe.execute()
        stale = [_text(b) for b in replies[-1]]
        orphans = await self._count_orphans(stale)
        out: list[QueueDemand] = []
        for i, q in enumerate(queues):
            ready, outstanding, delayed, dead = (int(r) for r in replies[4 * i: 4 * i + 4])
            out.append(QueueDemand(
                queue=q, ready=ready, outstanding=outstanding, delayed=delayed, dead=dead,
                orphaned=orphans[q] + orphans[q + _DELAY_SUFFIX],
            ))
        return Demand(tuple(out)), orphans

    async def _count_orphans(self, stale_brokers: Sequence[str]) -> dict[str, int]:
        names = [n for q in self._settings.queue_names for n in (q, q + _DELAY_SUFFIX)]
        counts = dict.fromkeys(names, 0)
        if not stale_brokers:
            return counts
        ns = self._settings.namespace
        async with self._client.pipeline(transaction=False) as pipe:
            for broker_id in stale_brokers:
                for name in names:
                    pipe.scard(f"{ns}:__acks__.{broker_id}.{name}")
            replies: list[Any] = await pipe.execute()
        for i, n in enumerate(replies):
            counts[names[i % len(names)]] += int(n)
        return counts

    def _run_maintenance(self, queue_names: Sequence[str]) -> str:
        """Blocking: one Dramatiq dispatch per queue name with maintenance forced; returns the broker id."""
        with self._broker_lock:
            if self._broker is None:
                # Our own client: RedisBroker(url=...) would build a pool without our timeouts. A Broker
                # does not register itself globally (only dramatiq.set_broker/get_broker do), and no
                # middleware: nothing here processes messages.
                client = _sync_client(self._settings)
                self._broker = RedisBroker(  # type: ignore[no-untyped-call]
                    client=client, namespace=self._settings.namespace, middleware=[],
                    maintenance_chance=MAINTENANCE_SCALE,
                )
            broker = self._broker
        for name in queue_names:
            # "qsize" only reads (HLEN/SCARD); the maintenance runs before any command in dispatch.lua.
            broker.do_qsize(name)
        return str(broker.broker_id)


def _async_client(settings: Settings) -> redis.asyncio.Redis:
    """The probe's client (no I/O): REDIS_URL wins over host/port/db/password; no client-side retries."""
    t = settings.redis_timeout_s
    retry = redis.asyncio.retry.Retry(NoBackoff(), 0)
    if settings.redis_url:
        # A password inside the URL wins; otherwise the credential's (so the URL can stay public).
        return redis.asyncio.Redis.from_url(settings.redis_url, retry=retry, socket_timeout=t,
                                            socket_connect_timeout=t, password=settings.redis_password or None)
    return redis.asyncio.Redis(host=settings.redis_host, port=settings.redis_port, db=settings.redis_db,
                               password=settings.redis_password or None, retry=retry, socket_timeout=t,
                               socket_connect_timeout=t)


def _sync_client(settings: Settings) -> redis.Redis:
    """The same, blocking, for Dramatiq's RedisBroker."""
    t = settings.redis_timeout_s
    retry = redis.retry.Retry(NoBackoff(), 0)
    if settings.redis_url:
        return redis.Redis.from_url(settings.redis_url, retry=retry, socket_timeout=t,
                                    socket_connect_timeout=t, password=settings.redis_password or None)
    return redis.Redis(host=settings.redis_host, port=settings.redis_port, db=settings.redis_db,
                       password=settings.redis_password or None, retry=retry, socket_timeout=t,
                       socket_connect_timeout=t)


def describe_failure(exc: BaseException, settings: Settings) -> str:
    """A one-line reason for a Redis failure, naming where Redis is and never the password."""
    if isinstance(exc, TimeoutError | redis.TimeoutError):
        reason = f"no answer within {settings.redis_timeout_s:g} s"
    elif isinstance(exc, _AUTH_ERRORS):
        reason = "authentication refused"
    else:
        detail = " ".join(str(exc).split())[:200]
        reason = f"{type(exc).__name__}: {detail}" if detail else type(exc).__name__
    for secret in _secrets(settings):
        reason = reason.replace(secret, "***")
    return f"Redis at {settings.redis_location()}: {reason}"


def _secrets(settings: Settings) -> list[str]:
    """The password in every spelling an error text might carry (as set, URL-quoted, URL-unquoted)."""
    raw = [settings.redis_password] if settings.redis_password else []
    if settings.redis_url:
        try:
            password = urlsplit(settings.redis_url).password
        except ValueError:
            password = None
        if password:
            raw += [password, unquote(password)]
    spellings = {form for secret in raw for form in (secret, quote(secret, safe=""))}
    return sorted(spellings, key=len, reverse=True)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class FakeDemandProbe:
    """An in-memory `DemandProbe` for tests of the agent loop.

    Set `demand` to what the next `fetch_demand()` returns and `error` to a `BrokerError` that every
    call raises until it is cleared. `recover_orphans()` models Dramatiq's maintenance: each queue's
    orphans become ready (outstanding is unchanged, as orphans are in it already).
    """

    def __init__(self, demand: Demand | None = None) -> None:
        self.demand = demand if demand is not None else Demand(())
        self.error: BrokerError | None = None
        self.fetch_calls = 0
        self.recover_calls = 0
        self.closed = False

    def set_queue(self, queue: str, *, ready: int = 0, outstanding: int | None = None, delayed: int = 0,
                  dead: int = 0, orphaned: int = 0) -> None:
        """Replace (or add) one queue's figures; `outstanding` defaults to `ready` (nothing in flight)."""
        q = QueueDemand(queue=queue, ready=ready, outstanding=ready if outstanding is None else outstanding,
                        delayed=delayed, dead=dead, orphaned=orphaned)
        others = tuple(x for x in self.demand.queues if x.queue != queue)
        self.demand = Demand((*others, q))

    async def fetch_demand(self) -> Demand:
        self.fetch_calls += 1
        if self.error is not None:
            raise self.error
        return self.demand

    async def recover_orphans(self) -> int:
        self.recover_calls += 1
        if self.error is not None:
            raise self.error
        recovered = self.demand.orphaned
        self.demand = Demand(tuple(replace(q, ready=q.ready + q.orphaned, orphaned=0)
                                   for q in self.demand.queues))
        return recovered

    async def close(self) -> None:
        self.closed = True

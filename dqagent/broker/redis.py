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

- oldest age: how long the message at the head of the list `ns:Q` has waited, from its
  `message_timestamp` (ms since the epoch, set by the producer; Dramatiq's `message.py`) inside its
  body in `ns:Q.msgs`, read by `OLDEST_SCRIPT` (see there). None when the list is empty.

Round trips per `fetch_demand()`: one pipeline (four O(1) commands per queue, one `EVAL` of
`OLDEST_SCRIPT` for all queues, one `ZRANGEBYSCORE` for the stale heartbeats); a second pipeline of two
`SCARD`s per stale broker and queue only when there are stale heartbeats. A pipeline cannot use the
result of its own commands, and the alternative (a Lua script that walks the ack sets) would be more
broker-side code to keep in step with Dramatiq's than the few reads of `OLDEST_SCRIPT`; stale heartbeats
are few (Dramatiq's maintenance removes a dead broker's entry once its ack sets are gone), so the second
trip is rare and small.

"Stale" uses this host's clock, as Dramatiq's maintenance does with the clock of the process that calls
it: `recover_orphans()` runs that maintenance from this process, so what is counted is what it recovers.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import quote, unquote, urlsplit

import redis
import redis.asyncio
import redis.asyncio.retry
import redis.exceptions
import redis.retry
from redis.backoff import NoBackoff

from dqagent.core.demand import Demand, QueueDemand
from dqagent.core.untrusted import RecordKind, Rejection, ascii_int, broker_id_problem, shown, text
from dqagent.errors import BrokerError
from dqagent.settings.config import Settings

#: Dramatiq's own heartbeat timeout: a broker silent this long is dead, and its ack sets are orphans.
#: dqagent never changes it (a shorter one would requeue the messages of live, busy workers). Its value,
#: `dramatiq.brokers.redis.DEFAULT_HEARTBEAT_TIMEOUT`, is written here (a unit test checks they agree) so that
#: `dqagent status` does not import Dramatiq (15 ms of its start-up); the maintenance imports it when it runs.
HEARTBEAT_TIMEOUT_MS: int = 60_000

_DELAY_SUFFIX = ".DQ"

#: The oldest waiting message of every queue, in one atomic EVAL (one round trip), never decoding a large body.
#:
#: KEYS: `ns:Q` and `ns:Q.msgs` for each queue in turn. ARGV: `BODY_TAIL_LIMIT`, `BODY_DECODE_LIMIT`.
#: Reply: one entry per queue, the `message_timestamp` (ms, as a string of digits) of the id at the head of
#: `ns:Q`; nil for an empty list; -1 when the head has no body, a body larger than `BODY_TAIL_LIMIT`, or no
#: readable `message_timestamp`.
#:
#: Why the head, and why that field (Dramatiq 2.2, read in its source):
#: - `dramatiq/brokers/redis/dispatch.lua`: "enqueue" runs `hset Q.msgs id data` then `rpush Q id`; "fetch"
#:   takes `lpop Q`. So the list is in enqueue order and its head (`LINDEX Q 0`) is the next to be
#:   fetched, the one that has waited longest. ("requeue" and the maintenance `rpush` to the tail: a
#:   requeued message queues again behind newer ones, and its age shows only once it is at the head.)
#: - `dramatiq/message.py`: `Message.message_timestamp`, "The UNIX timestamp in milliseconds representing
#:   when the message was first enqueued" (`int(time.time() * 1000)` on the producer); it is the dataclass's
#:   last field, and `Message.asdict()` keeps field order. `JSONEncoder` (the default) writes
#:   `json.dumps(data, separators=(",", ":"))`, so a body ends with `,"message_timestamp":<digits>}`.
#:   Retries and due delayed messages are enqueued as `message.copy(...)`, which keeps the timestamp.
#:
#: Cost inside Redis (its one thread serves every client while a script runs): any client may put any body
#: at a head. `HSTRLEN` first; a body over `BODY_TAIL_LIMIT` is never fetched (age unknown). Otherwise the
#: timestamp is matched, anchored at the end, in the body's last 256 bytes only: JSON escapes every `"` inside
#: a string, so a match that ends the body is the top-level key. Only a small body (`BODY_DECODE_LIMIT`) whose
#: tail does not match (another encoder's key order) is decoded whole with cjson, in a pcall: a body from
#: another encoder (pickle) must not fail the script, and with it the whole read. Measured on redis 7
#: (one core): fetching a 20 MB body into Lua took 66 ms and decoding it 115 ms; a 1 MiB body 2 ms to fetch.
OLDEST_SCRIPT = """
local tail_limit, decode_limit = tonumber(ARGV[1]), tonumber(ARGV[2])
local out = {}
for i = 1, #KEYS, 2 do
  local ts = false
  local id = redis.call("lindex", KEYS[i], 0)
  if id then
    ts = -1
    local size = redis.call("hstrlen", KEYS[i + 1], id)
    if size > 0 and size <= tail_limit then
      local body = redis.call("hget", KEYS[i + 1], id)
      local found = string.match(body, '[{,]%s*"message_timestamp"%s*:%s*(%d+)%s*}%s*$', math.max(1, size - 255))
      if found then
        ts = found
      elseif size <= decode_limit then
        local ok, msg = pcall(cjson.decode, body)
        if ok and type(msg) == "table" and type(msg.message_timestamp) == "number" then
          local v = msg.message_timestamp
          if v >= 0 and v < 1e15 then
            ts = string.format("%.0f", math.floor(v))
          end
        end
      end
    end
  end
  out[#out + 1] = ts
end
return out
"""
#: Largest head body `OLDEST_SCRIPT` fetches at all (bytes): a larger one gives "age unknown".
BODY_TAIL_LIMIT = 1 << 20
#: Largest head body it decodes whole when its tail holds no `message_timestamp` (bytes).
BODY_DECODE_LIMIT = 64 << 10
#: Largest `message_timestamp` taken (ms; 15 digits, the year 33658): a larger one is unreadable.
MAX_STAMP_MS = 10**15 - 1
#: Stale heartbeats read per poll: each costs two SCARDs. More (a rogue client's) are not counted.
MAX_STALE_HEARTBEATS = 1000
_T = TypeVar("_T")
_AUTH_ERRORS = (
    redis.exceptions.AuthenticationError, redis.exceptions.AuthorizationError,
    redis.exceptions.NoPermissionError, redis.exceptions.AuthenticationWrongNumberOfArgsError,
)


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
        self._client = async_client(settings)
        self._broker: Any = None  # a dramatiq RedisBroker, built at the first maintenance
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
            pipe.eval(OLDEST_SCRIPT, 2 * len(queues), *(k for q in queues for k in (f"{ns}:{q}", f"{ns}:{q}.msgs")),
                      BODY_TAIL_LIMIT, BODY_DECODE_LIMIT)
            # The same range Dramatiq's maintenance takes: scores 0 .. now - timeout, inclusive (capped).
            pipe.zrangebyscore(f"{ns}:__heartbeats__", 0, cutoff_ms, start=0, num=MAX_STALE_HEARTBEATS + 1)
            replies: list[Any] = await pipe.execute(raise_on_error=False)
        now_ms = time.time() * 1000
        script_reply = replies[-2]
        for reply in replies:
            if isinstance(reply, Exception) and reply is not script_reply:
                raise reply
        if isinstance(script_reply, Exception):
            # Redis refused the script (an ACL without EVAL, scripting disabled): the counts still count.
            ages = OldestAges((None,) * len(queues), skewed=0, unreadable=len(queues))
        else:
            ages = oldest_ages(script_reply, now_ms)
        stale, rejected = stale_brokers(replies[-1], f"{ns}:__heartbeats__")
        orphans = await self._count_orphans(stale)
        out: list[QueueDemand] = []
        for i, q in enumerate(queues):
            ready, outstanding, delayed, dead = (int(r) for r in replies[4 * i: 4 * i + 4])
            out.append(QueueDemand(
                queue=q, ready=ready, outstanding=outstanding, delayed=delayed, dead=dead,
                orphaned=orphans[q] + orphans[q + _DELAY_SUFFIX], oldest_age_s=ages.ages_s[i],
            ))
        return Demand(tuple(out), skewed=ages.skewed, unreadable=ages.unreadable, rejected=rejected), orphans

    async def _count_orphans(self, stale_brokers: Sequence[bytes]) -> dict[str, int]:
        names = [n for q in self._settings.queue_names for n in (q, q + _DELAY_SUFFIX)]
        counts = dict.fromkeys(names, 0)
        if not stale_brokers:
            return counts
        ns = self._settings.namespace.encode()
        async with self._client.pipeline(transaction=False) as pipe:
            for broker_id in stale_brokers:
                for name in names:  # bytes: the key is exactly the broker's, whatever its id's encoding
                    pipe.scard(ns + b":__acks__." + broker_id + b"." + name.encode())
            replies: list[Any] = await pipe.execute()
        for i, n in enumerate(replies):
            counts[names[i % len(names)]] += int(n)
        return counts

    def _run_maintenance(self, queue_names: Sequence[str]) -> str:
        """Blocking: one Dramatiq dispatch per queue name with maintenance forced; returns the broker id."""
        from dramatiq.brokers.redis import MAINTENANCE_SCALE, RedisBroker

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


@dataclass(frozen=True, slots=True)
class OldestAges:
    """`OLDEST_SCRIPT`'s reply turned into ages, and how many of them were clamped or unreadable."""

    ages_s: tuple[float | None, ...]
    skewed: int
    unreadable: int


def oldest_ages(timestamps_ms: Sequence[bytes | str | int | None], now_ms: float) -> OldestAges:
    """Ages in seconds at `now_ms` (this host's clock) of the head messages stamped `timestamps_ms`
    (`OLDEST_SCRIPT`'s reply: digits, -1 or None).

    A timestamp in the future (the producer's clock ahead of this host's) gives 0, counted in `skewed`:
    the message has waited at least that long, and a negative age would read as "no wait" anyway.
    An unreadable head (-1, or anything but 1..15 ASCII digits) gives None, counted in `unreadable`;
    an empty list (None) gives None.
    """
    ages: list[float | None] = []
    skewed = unreadable = 0
    for raw in timestamps_ms:
        ts = None if raw is None else ascii_int(text(raw) if isinstance(raw, bytes) else raw, 0, MAX_STAMP_MS)
        if raw is None:
            ages.append(None)
        elif ts is None:
            ages.append(None)
            unreadable += 1
        else:
            age_s = (now_ms - ts) / 1000
            skewed += age_s < 0
            ages.append(max(0.0, age_s))
    return OldestAges(tuple(ages), skewed, unreadable)


def async_client(settings: Settings) -> redis.asyncio.Redis:
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


def stale_brokers(members: Sequence[bytes | str], key: str) -> tuple[list[bytes], tuple[Rejection, ...]]:
    """The stale heartbeat members that can be Dramatiq broker ids (as bytes), and the rest as rejections:
    members that are no broker id (`broker_id_problem`), and the fact that the read hit its cap."""
    ids: list[bytes] = []
    rejected: list[Rejection] = []
    for member in members[:MAX_STALE_HEARTBEATS]:
        raw = member.encode("utf-8", errors="surrogateescape") if isinstance(member, str) else member
        problem = broker_id_problem(raw)
        if problem:
            rejected.append(Rejection(RecordKind.HEARTBEAT, f"{key} {shown(raw)}", problem))
        else:
            ids.append(raw)
    if len(members) > MAX_STALE_HEARTBEATS:
        rejected.append(Rejection(RecordKind.HEARTBEAT, key, f"more than {MAX_STALE_HEARTBEATS} stale heartbeats: "
                                  "the orphans of the others are not counted"))
    return ids, tuple(rejected)

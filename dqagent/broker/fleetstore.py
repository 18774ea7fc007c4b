"""Fleet mode's effects: the members' records in the broker's Redis, and this host's id.

Keys, in the Dramatiq namespace (`DRAMATIQ_NAMESPACE`, e.g. `dramatiq`) and the fleet's name (`FLEET`):

- `ns:__dqagent_fleet__:FLEET:host:ID` -> `<Redis time ms> <record JSON>`, with a TTL (`PX`) of a few
  demand polls: a host that dies or loses Redis drops out by itself, on the server's clock;
- `ns:__dqagent_fleet__:FLEET` -> the set of member ids, so one read finds every record.

Every write is one short Lua script (`_SYNC`: publish this host's record and read the live records, in
one round trip and atomically) or one MULTI/EXEC (`leave`). The records are untrusted (any client of the
Redis can write them): the script reads at most `MAX_MEMBERS` ids of the member set (`SSCAN` beyond), and
does not fetch a record over `MAX_RECORD_BYTES` or not a string; `dqagent.core.fleet.read_records` checks the
rest. Nothing else is written: no leader key, no lease, no counter (why: docs/fleet.md). The pure decision
on what was read is `dqagent.core.fleet`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import math
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol, TypeVar

import redis
import redis.asyncio

from dqagent import __version__
from dqagent.broker.redis import async_client, describe_failure
from dqagent.core.fleet import (
    MAX_MEMBERS,
    MAX_RECORD_BYTES,
    FleetView,
    Member,
    Share,
    fleet_report,
    read_records,
    render_fleet,
)
from dqagent.core.step import FleetInput, Seen
from dqagent.errors import BrokerError, ConfigError
from dqagent.settings.config import Settings
from dqagent.settings.declarations import REDIS_FIELDS

__all__ = ["FleetCoordinator", "FleetStore", "RedisFleetStore",
           "fleet_status", "host_id", "record_ttl_ms"]

MACHINE_ID = Path("/etc/machine-id")
#: A record outlives this many demand polls (plus one Redis timeout) before it expires.
TTL_POLLS = 3
_T = TypeVar("_T")

# KEYS[1]: the member set. ARGV[1]: record key prefix; ARGV[2]: this host's id ("" = only read);
# ARGV[3]: its record; ARGV[4]: its TTL in ms; ARGV[5]: most ids read; ARGV[6]: largest record fetched.
# Returns {Redis time ms, member count, id, record, id, record...}: a record as stored, or "!<why>" when it
# was not fetched (larger than ARGV[6], not a string, an id longer than 64 bytes). An id without a record
# is dropped from the set by a writer. Cost: O(ARGV[5]) whatever a stranger put in the set.
_SYNC = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local writing = ARGV[2] ~= ''
local limit, max_bytes = tonumber(ARGV[5]), tonumber(ARGV[6])
if writing then
  redis.call('SET', ARGV[1] .. ARGV[2], now .. ' ' .. ARGV[3], 'PX', ARGV[4])
  redis.call('SADD', KEYS[1], ARGV[2])
  redis.call('PEXPIRE', KEYS[1], 10 * tonumber(ARGV[4]))
end
local total = redis.call('SCARD', KEYS[1])
local ids = {}
if total <= limit then
  ids = redis.call('SMEMBERS', KEYS[1])
else
  local cursor = '0'
  repeat
    local page = redis.call('SSCAN', KEYS[1], cursor, 'COUNT', limit)
    cursor = page[1]
    for _, id in ipairs(page[2]) do
      if #ids < limit then ids[#ids + 1] = id end
    end
  until cursor == '0' or #ids >= limit
end
local out = {now, total}
for _, host in ipairs(ids) do
  if #host > 64 then
    out[#out + 1] = string.sub(host, 1, 64)
    out[#out + 1] = '!id longer than 64 bytes'
  else
    local n = redis.pcall('STRLEN', ARGV[1] .. host)
    if type(n) ~= 'number' then
      out[#out + 1] = host
      out[#out + 1] = '!not a string'
    elseif n > max_bytes then
      out[#out + 1] = host
      out[#out + 1] = '!' .. n .. ' bytes, more than ' .. max_bytes
    elseif n > 0 then
      out[#out + 1] = host
      out[#out + 1] = redis.call('GET', ARGV[1] .. host)
    elseif writing then
      redis.call('SREM', KEYS[1], host)
    end
  end
end
return out
"""


def record_ttl_ms(settings: Settings) -> int:
    """How long a record lives: TTL_POLLS demand polls plus one Redis timeout (a slow, live member stays in)."""
    return math.ceil((TTL_POLLS * settings.tick_interval_s() + settings.redis_timeout_s) * 1000)


def host_id(settings: Settings, machine_id: Path = MACHINE_ID) -> str:
    """FLEET_HOST_ID, else /etc/machine-id. Raises ConfigError (exit 78) when neither gives an id."""
    if settings.fleet_host_id:
        return settings.fleet_host_id
    try:
        text = machine_id.read_text().strip()
    except OSError as exc:
        raise ConfigError("FLEET_HOST_ID", "", f"empty, and {machine_id} is unreadable ({exc.strerror}): "
                          "set FLEET_HOST_ID to this host's id in the fleet") from None
    if not text:
        raise ConfigError("FLEET_HOST_ID", "", f"empty, and {machine_id} is empty: set FLEET_HOST_ID")
    return text


def keys(settings: Settings) -> tuple[str, str]:
    """(member set key, record key prefix) of the settings' fleet."""
    base = f"{settings.namespace}:__dqagent_fleet__:{settings.fleet}"
    return base, base + ":host:"


class FleetStore(Protocol):
    """Where the members' records live."""

    async def sync(self, me: Member | None) -> FleetView:
        """Publish `me` (None: only read) and return every live record. Raises BrokerError."""
        ...

    async def leave(self, host: str) -> None:
        """Remove `host`'s record now (instead of at its TTL). Raises BrokerError."""
        ...

    async def close(self) -> None:
        ...


def _view(settings: Settings, host: str, reply: list[Any]) -> FleetView:
    """The script's reply as a view: Redis's own TIME and SCARD are integers; records are checked."""
    now_ms, total = int(reply[0]), int(reply[1])
    pairs = list(zip(reply[2::2], reply[3::2], strict=True))
    members, rejected = read_records(pairs, now_ms, record_ttl_ms(settings), total, keys(settings)[0])
    return FleetView(settings.fleet, host, members, now_ms, rejected)


class RedisFleetStore:
    """`FleetStore` in the broker's Redis; same timeouts and one-line errors as the demand probe."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._client: redis.asyncio.Redis = async_client(settings)
        self._script = self._client.register_script(_SYNC)

    async def _guard(self, work: Awaitable[_T]) -> _T:
        try:
            async with asyncio.timeout(self._settings.redis_timeout_s):
                return await work
        except (redis.RedisError, OSError) as exc:
            raise BrokerError(describe_failure(exc, self._settings)) from None

    async def sync(self, me: Member | None) -> FleetView:
        members_key, prefix = keys(self._settings)
        args: list[str | int] = [prefix, me.host, me.to_json(), me.ttl_ms] if me is not None else [prefix, "", "", 0]
        args += [MAX_MEMBERS, MAX_RECORD_BYTES]
        reply = await self._guard(self._script(keys=[members_key], args=args))
        return _view(self._settings, me.host if me is not None else "", list(reply))

    async def leave(self, host: str) -> None:
        members_key, prefix = keys(self._settings)

        async def both() -> None:
            async with self._client.pipeline(transaction=True) as pipe:
                pipe.srem(members_key, host)
                pipe.delete(prefix + host)
                await pipe.execute()

        await self._guard(both())

    async def close(self) -> None:
        await self._client.aclose()


class FleetCoordinator:
    """The agent's side of fleet mode: publish, read, decide G with the fleet's range, take this host's share.

    Follows `systemctl reload`: the store is rebuilt when the Redis settings, the namespace or FLEET
    change, and the host id is re-read. `store_factory` builds the store (tests pass a fake).
    """

    def __init__(self, store_factory: Callable[[Settings], FleetStore] = RedisFleetStore,
                 machine_id: Path = MACHINE_ID) -> None:
        self._factory = store_factory
        self._machine_id = machine_id
        self._store: FleetStore | None = None
        self._built_for: tuple[Any, ...] = ()
        self._host = ""
        self.last: Share | None = None
        self._published: Member | None = None
        #: Redis time of the read this host's last decision was made from (0: none yet).
        self._decided_ms = 0

    def sibling(self) -> FleetCoordinator:
        """A coordinator for another pool's fleet (`FLEET/<pool>`), on the same kind of store."""
        return FleetCoordinator(self._factory, self._machine_id)

    async def _for(self, s: Settings) -> FleetStore:
        # The connection and the keys: the declared Redis settings (queues aside) and the fleet's name and id.
        wanted = (*(getattr(s, f) for f in REDIS_FIELDS if f != "queue_names"), s.fleet, s.fleet_host_id)
        if self._store is None or wanted != self._built_for:
            self._host = host_id(s, self._machine_id)
            await self.close()
            self._store = self._factory(s)
            self._built_for = wanted
            self.last = self._published = None
            self._decided_ms = 0
        return self._store

    async def sync(self, s: Settings, seen: Seen) -> FleetInput:
        """Publish this host's record as of `seen` and read the fleet with it, for the decision step.
        Raises BrokerError (Redis unreachable: the agent then keeps its workers, as it does when demand
        cannot be read) and ConfigError (no host id)."""
        store = await self._for(s)
        last, obs = self.last, seen.obs
        me = Member(self._host, s.fleet_weight or s.max_processes, s.min_processes, s.max_processes,
                    workers=obs.workers, running=seen.census.running, starting=obs.starting,
                    target=last.decision.target if last else obs.workers,
                    global_target=last.global_target if last else obs.workers, decided_ms=self._decided_ms,
                    version=__version__, decision=last.decision.reason if last else "", ttl_ms=record_ttl_ms(s))
        return FleetInput(me, await store.sync(me))

    def remember(self, fleet: FleetInput, share: Share | None) -> None:
        """The decision step's share of this read: published with the next record."""
        self.last = share
        self._published = fleet.me
        self._decided_ms = fleet.view.now_ms

    async def publish(self, s: Settings, workers: int, starting: int) -> None:
        """After acting: publish the pool this tick leaves behind (starts issued count, stops do not), so
        the others count it at once rather than at this host's next poll. Only when it changed; a failure
        is left to the next poll (the record then stays one poll older)."""
        me, last = self._published, self.last
        if me is None or last is None or self._store is None:
            return
        new = dataclasses.replace(me, workers=workers, starting=starting, target=last.decision.target,
                                  global_target=last.global_target, decided_ms=self._decided_ms,
                                  decision=last.decision.reason)
        if (new.workers, new.starting, new.target, new.global_target, new.decided_ms) == \
                (me.workers, me.starting, me.target, me.global_target, me.decided_ms):
            return
        with contextlib.suppress(BrokerError):
            await self._store.sync(new)
            self._published = new

    async def leave(self, s: Settings) -> None:
        """Drop this host's record at once (`systemctl stop dqagent`: its workers are stopped too)."""
        if self._store is not None and s.fleet:
            await self._store.leave(self._host)

    async def close(self) -> None:
        if self._store is not None:
            await self._store.close()
            self._store = None


async def fleet_status(s: Settings, queue_length: int | None, machine_id: Path = MACHINE_ID) -> dict[str, Any]:
    """`dqagent status --fleet`: `fleet_report` of one read-only look at the fleet, plus its `text`;
    {"error": ...} instead when FLEET is empty or Redis cannot be read."""
    if not s.fleet:
        report: dict[str, Any] = {"fleet": "", "error": "FLEET is empty: this host is not in a fleet"}
    else:
        store = RedisFleetStore(s)
        try:
            view = await store.sync(None)
        except BrokerError as exc:
            report = {"fleet": s.fleet, "error": str(exc)}
        else:
            try:
                me = host_id(s, machine_id)
            except ConfigError:
                me = ""
            report = fleet_report(dataclasses.replace(view, host=me), queue_length)
        finally:
            await store.close()
    report["text"] = render_fleet(report) if "error" not in report else f"fleet: unavailable ({report['error']})"
    return report

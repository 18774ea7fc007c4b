"""PLACEHOLDER until the demand branch lands: the broker probe interface with an LLEN-only reading."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from dqagent.config import QueueMetric, Settings
from dqagent.errors import BrokerError


@dataclass(frozen=True, slots=True)
class QueueDemand:
    queue: str
    ready: int
    outstanding: int
    delayed: int
    dead: int
    orphaned: int

    @property
    def in_flight(self) -> int:
        return max(0, self.outstanding - self.ready)


@dataclass(frozen=True, slots=True)
class Demand:
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
        return self.outstanding if metric is QueueMetric.OUTSTANDING else self.ready


class DemandProbe(Protocol):
    async def fetch_demand(self) -> Demand: ...
    async def recover_orphans(self) -> int: ...
    async def close(self) -> None: ...


class RedisDemandProbe:
    def __init__(self, settings: Settings) -> None:
        self._s = settings
        self._client: aioredis.Redis | None = None

    async def fetch_demand(self) -> Demand:
        s = self._s
        if self._client is None:
            self._client = aioredis.Redis(host=s.redis_host, port=s.redis_port, db=s.redis_db,
                                          password=s.redis_password or None,
                                          socket_timeout=s.redis_timeout_s,
                                          socket_connect_timeout=s.redis_timeout_s)
        try:
            pipe = self._client.pipeline(transaction=False)
            for q in s.queue_names:
                pipe.llen(f"{s.namespace}:{q}")
                pipe.hlen(f"{s.namespace}:{q}.msgs")
            res = await pipe.execute()
        except (RedisError, OSError) as exc:
            raise BrokerError(f"redis {s.redis_location()}: {type(exc).__name__}") from None
        return Demand(tuple(QueueDemand(q, int(res[2 * i]), int(res[2 * i + 1]), 0, 0, 0)
                            for i, q in enumerate(s.queue_names)))

    async def recover_orphans(self) -> int:
        return 0

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

"""What demand is (pure): the figures one read of the broker gives, per queue and summed, and the probe's
interface. The Redis reader is `dqagent.broker.redis`; the decision step (`dqagent.core.step`) reads these.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from dqagent.core.untrusted import Rejection
from dqagent.settings.config import QueueMetric


@dataclass(frozen=True, slots=True)
class QueueDemand:
    """What one Dramatiq queue holds at one instant: counts of messages, and how long the message at the head
    of the ready list has waited since it was first enqueued (its `message_timestamp`, clamped at 0; None when
    the list is empty or the head is unreadable; see `dqagent.broker.redis.OLDEST_SCRIPT`)."""

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
    #: RabbitMQ only: the queue's consumers (one per Dramatiq worker process); None on Redis (not a figure it has).
    consumers: int | None = None
    #: False when in flight is an estimate (RabbitMQ without its management API: `dqagent.core.rabbitdemand`).
    in_flight_known: bool = True

    @property
    def in_flight(self) -> int:
        """Fetched by a worker and not acked yet: prefetched, running or orphaned."""
        return max(0, self.outstanding - self.ready)


@dataclass(frozen=True, slots=True)
class Demand:
    """The demand over every configured queue; the figures are sums over `queues`."""

    queues: tuple[QueueDemand, ...]
    #: Queues whose head message was stamped in this host's future (clock skew): age clamped to 0.
    skewed: int = 0
    #: Queues whose head message had no readable `message_timestamp` (not Dramatiq's JSON encoder, or a body
    #: over `dqagent.broker.redis.BODY_TAIL_LIMIT`), or every queue when Redis refused the script (an ACL without EVAL).
    unreadable: int = 0
    #: Broker data skipped by this read (heartbeat members that are no broker id, or past the cap).
    rejected: tuple[Rejection, ...] = ()

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

    @property
    def oldest_age_s(self) -> float | None:
        """The oldest age over the queues; None when no queue has a waiting message."""
        return max((q.oldest_age_s for q in self.queues if q.oldest_age_s is not None), default=None)

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

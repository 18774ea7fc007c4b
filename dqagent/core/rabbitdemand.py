"""What RabbitMQ's answers mean as demand (pure): Dramatiq's three queues per queue, turned into `QueueDemand`.

Dramatiq's RabbitMQ broker (`dramatiq/brokers/rabbitmq.py`) declares, for each queue `Q`, `Q` itself, its delay
queue `Q.DQ` and its dead-letter queue `Q.XQ`. Read per queue:

- ready(Q) and consumers(Q): a passive `queue.declare` over AMQP (cheap, exact, at this instant).
- unacknowledged(Q): messages delivered to a worker and not acked yet, prefetched or running: in flight. Only the
  management API has it (a statistic sampled every `collect_statistics_interval`, 5 s by default).
- Q.DQ, ready + unacknowledged: delayed. A worker takes delayed messages from `Q.DQ` and holds them
  unacknowledged in its own memory until their ETA (Dramatiq's `Worker.handle_delayed_messages`), then
  enqueues a copy on `Q` and acks the `Q.DQ` one. So `Q.DQ`'s unacknowledged messages are not work being
  done: they are never load. Without the management API they are not seen at all.
- Q.XQ ready: dead-lettered.

Without the management API, in flight is estimated: RabbitMQ keeps a message ready only while every consumer's
prefetch window is full, so while anything is ready each consumer holds `prefetch` messages, and in flight is
consumers x prefetch (the same figure Redis's outstanding count gives then); when nothing is ready it counts 0
(the workers' last messages are not seen). Such a `QueueDemand` has `in_flight_known=False`.

The oldest message's age is never known: Dramatiq sets no AMQP `timestamp` property (its `message_timestamp` is
inside the body, which only a consuming read could see), so `oldest_age_s` is None.
"""

from __future__ import annotations

from dataclasses import dataclass

from dqagent.core.demand import QueueDemand

DELAY_SUFFIX = ".DQ"
DEAD_SUFFIX = ".XQ"


@dataclass(frozen=True, slots=True)
class QueueCounts:
    """One RabbitMQ queue as read: ready and consumers (AMQP), unacknowledged (management API; None: not read).
    A queue that does not exist (Dramatiq declares them when a worker or producer first uses them) is all 0."""

    ready: int = 0
    consumers: int = 0
    unacked: int | None = None


def queue_demand(queue: str, main: QueueCounts, delay: QueueCounts, dead: QueueCounts,
                 prefetch: int) -> QueueDemand:
    """The demand of Dramatiq queue `queue` from its three RabbitMQ queues; `prefetch`: the messages one
    consumer of `queue` holds at most (Dramatiq: 2 x its threads), used only to estimate in flight."""
    known = main.unacked is not None
    estimate = main.consumers * max(prefetch, 1) if main.ready > 0 else 0
    in_flight = main.unacked if main.unacked is not None else estimate
    return QueueDemand(queue=queue, ready=main.ready, outstanding=main.ready + in_flight,
                       delayed=delay.ready + (delay.unacked or 0), dead=dead.ready, orphaned=0,
                       oldest_age_s=None, consumers=main.consumers, in_flight_known=known)

"""The one place that chooses the demand probe from the settings: RABBITMQ_URL set -> RabbitMQ, else Redis.

Every reader of demand (the agent at start and on reload, `dqagent status`, `dqagent check`) builds its probe
here, so a broker added later is added once. The broker modules are imported only when chosen: `dqagent status`
on a Redis host never imports the AMQP client, nor a RabbitMQ host redis-py's probe.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from dqagent.core.demand import DemandProbe
from dqagent.errors import ConfigError
from dqagent.settings.config import Settings
from dqagent.settings.pools import Pool
from dqagent.settings.workercmd import worker_shape


def open_probe(settings: Settings, pools: Sequence[Pool] = ()) -> DemandProbe:
    """The demand probe for `settings` (no I/O: it connects at its first read). `pools`: where each queue's
    consumer prefetch comes from (RabbitMQ's estimate without its management API); none: `settings` alone."""
    if settings.rabbitmq_url:
        from dqagent.broker.rabbitmq import RabbitmqDemandProbe

        return RabbitmqDemandProbe(settings, prefetch_by_queue(pools or (Pool("default", settings),)))
    from dqagent.broker.redis import RedisDemandProbe

    return RedisDemandProbe(settings)


def prefetch_by_queue(pools: Sequence[Pool]) -> dict[str, int]:
    """Each queue's per-consumer prefetch as Dramatiq sets it: 2 x the threads of its pool's worker command."""
    out: dict[str, int] = {}
    for pool in pools:
        try:
            threads = worker_shape(pool.settings.dramatiq_command, os.cpu_count()).threads
        except ConfigError:  # a command Dramatiq rejects: the agent refused it already; keep the default
            continue
        out.update(dict.fromkeys(pool.settings.queue_names, 2 * threads))
    return out

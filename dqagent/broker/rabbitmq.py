"""The RabbitMQ demand probe: the only module that speaks AMQP (aiormq) to Dramatiq's RabbitMQ broker.

What it reads, per Dramatiq queue `Q` (see `dqagent.core.rabbitdemand` for what the figures mean): a passive
`queue.declare` of `Q`, `Q.DQ` and `Q.XQ` on one channel (ready and consumers: exact, and cheap: no message is
touched, no queue created, and a declare with other arguments than Dramatiq's cannot fail), and, when
`RABBITMQ_MANAGEMENT_URL` is set, the unacknowledged counts of `Q` and `Q.DQ` from the management API
(`dqagent.broker.rabbitmq_http`), in parallel with the AMQP reads.

One AMQP connection is kept between reads and opened again after any failure (the agent loop owns the retry
policy: no reconnect of the client's own). A passive declare of a queue that does not exist yet (Dramatiq
declares its queues when a worker or producer first uses them) closes the channel with 404: it counts as
empty, and the next queue gets a new channel.

Every call is bounded by `RABBITMQ_TIMEOUT` as a whole; every failure becomes a one-line `BrokerError` naming
`Settings.broker_location()`, never the password. Orphans do not exist here: RabbitMQ itself re-queues the
unacknowledged messages of a connection that closes or dies.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping
from typing import Any

import aiormq
import aiormq.exceptions
from yarl import URL

from dqagent.broker import rabbitmq_http
from dqagent.core.demand import Demand
from dqagent.core.rabbitdemand import DEAD_SUFFIX, DELAY_SUFFIX, QueueCounts, queue_demand
from dqagent.errors import BrokerError
from dqagent.settings.config import Settings
from dqagent.settings.rabbitmq import user, vhost

#: A consumer's prefetch when a queue's pool is unknown: Dramatiq's default, 2 x its default 8 threads.
DEFAULT_PREFETCH = 16


class RabbitmqDemandProbe:
    """`DemandProbe` on Dramatiq's RabbitMQ broker. `prefetch`: per queue, what one consumer holds at most
    (2 x the threads of the pool's `DRAMATIQ_COMMAND`), for the estimate without the management API."""

    def __init__(self, settings: Settings, prefetch: Mapping[str, int] | None = None) -> None:
        self._settings = settings
        self._prefetch = dict(prefetch or {})
        self._timeout_s = settings.rabbitmq_timeout_s
        self._connection: Any = None
        self._channel: Any = None
        self._http = (rabbitmq_http.ManagementApi(settings.rabbitmq_management_url, user(settings.rabbitmq_url),
                                                  settings.rabbitmq_password, settings.rabbitmq_timeout_s,
                                                  vhost(settings.rabbitmq_url))
                      if settings.rabbitmq_management_url else None)

    async def fetch_demand(self) -> Demand:
        """Every configured queue's demand. Raises `BrokerError` when RabbitMQ (or its management API, when
        set) is down, slow past the timeout, refuses the credentials or the virtual host."""
        try:
            async with asyncio.timeout(self._timeout_s):
                return await self._read()
        except BrokerError:
            await self._drop()
            raise
        except (aiormq.exceptions.AMQPError, OSError, EOFError) as exc:  # TimeoutError is an OSError
            await self._drop()
            raise BrokerError(describe_failure(exc, self._settings)) from None

    async def recover_orphans(self) -> int:
        """Nothing to do: RabbitMQ re-queues a lost consumer's unacknowledged messages itself."""
        return 0

    async def close(self) -> None:
        """Close the AMQP connection."""
        await self._drop()

    async def _read(self) -> Demand:
        names = self._settings.queue_names
        unacked_task = asyncio.ensure_future(self._http.unacked(names)) if self._http else None
        try:
            counts = {name: await self._declare(name) for q in names
                      for name in (q, q + DELAY_SUFFIX, q + DEAD_SUFFIX)}
            unacked = await unacked_task if unacked_task else None
        finally:
            if unacked_task and not unacked_task.done():
                unacked_task.cancel()
        out = []
        for q in names:
            main, delay = counts[q], counts[q + DELAY_SUFFIX]
            if unacked is not None:  # a queue not sampled yet (seconds after its creation): estimated, as without
                main = QueueCounts(main.ready, main.consumers, unacked.get(q))
                delay = QueueCounts(delay.ready, delay.consumers, unacked.get(q + DELAY_SUFFIX, 0))
            out.append(queue_demand(q, main, delay, counts[q + DEAD_SUFFIX],
                                    self._prefetch.get(q, DEFAULT_PREFETCH)))
        return Demand(tuple(out))

    async def _declare(self, name: str) -> QueueCounts:
        channel = await self._open_channel()
        try:
            ok = await channel.queue_declare(name, passive=True)
        except aiormq.exceptions.ChannelNotFoundEntity:
            self._channel = None  # RabbitMQ closed it
            return QueueCounts()
        return QueueCounts(int(ok.message_count or 0), int(ok.consumer_count or 0))

    async def _open_channel(self) -> Any:
        if self._connection is None or self._connection.is_closed:
            url = URL(self._settings.rabbitmq_url)
            url = url.with_user(user(self._settings.rabbitmq_url)).with_password(
                self._settings.rabbitmq_password or None)
            # `name`: the connection's name in RabbitMQ's tools (rabbitmqctl list_connections client_properties).
            self._connection = await aiormq.connect(url.update_query(name="dqagent"))
            self._channel = None
        if self._channel is None or self._channel.is_closed:
            self._channel = await self._connection.channel()
        return self._channel

    async def _drop(self) -> None:
        connection, self._connection, self._channel = self._connection, None, None
        if connection is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(self._timeout_s):
                    await connection.close()


def describe_failure(exc: BaseException, settings: Settings) -> str:
    """A one-line reason for a RabbitMQ failure, naming where it is and never the password."""
    if isinstance(exc, TimeoutError):
        reason = f"no answer within {settings.rabbitmq_timeout_s:g} s"
    elif isinstance(exc, aiormq.exceptions.ProbableAuthenticationError):
        reason = f"authentication refused for user {user(settings.rabbitmq_url)!r}"
    elif isinstance(exc, aiormq.exceptions.ProtocolSyntaxError | aiormq.exceptions.ChannelAccessRefused):
        reason = "connection refused by the server (no such virtual host, or no access to it for this user)"
    else:
        detail = " ".join(str(exc).split())[:200]
        reason = f"{type(exc).__name__}: {detail}" if detail else type(exc).__name__
    if settings.rabbitmq_password:
        reason = reason.replace(settings.rabbitmq_password, "***")
    return f"RabbitMQ at {settings.broker_location()}: {reason}"

"""`dqagent check`'s broker lines when RABBITMQ_URL is set: the connection, what is and is not visible, the queues."""

from __future__ import annotations

from dqagent.broker.probes import open_probe
from dqagent.errors import BrokerError
from dqagent.settings import sources
from dqagent.settings.rabbitmq import vhost

#: What the agent cannot see without RABBITMQ_MANAGEMENT_URL, and how it compensates (README "Brokers").
WITHOUT_MANAGEMENT = (
    "no RABBITMQ_MANAGEMENT_URL: the messages workers hold unacknowledged (in flight: prefetched or running) and "
    "the delayed messages workers hold until their ETA are not visible; in flight is estimated as consumers x "
    "prefetch (2 x threads) while messages are ready, 0 when none are (so the pool may shrink while its last "
    "messages run: stopped workers finish them or return them); set RABBITMQ_MANAGEMENT_URL to see them"
)


async def rabbitmq_results(loaded: sources.Loaded) -> list[tuple[bool, str]]:
    """(ok, text): one line for the connection (not ok: why, and the fix), one for the management API, one per
    queue (`dqagent.setup.check` makes them its `Result`s)."""
    s = loaded.settings
    probe = open_probe(s, loaded.pools)
    try:
        demand = await probe.fetch_demand()
    except BrokerError as exc:
        note = f" ({loaded.password_note}: run as root)" if loaded.password_note else ""
        return [(False, f"{exc}{note}; fix: check RABBITMQ_URL (user, virtual host) and RABBITMQ_MANAGEMENT_URL "
                       "in the settings file and the password in /etc/dqagent/rabbitmq-password")]
    finally:
        await probe.close()
    where = vhost(s.rabbitmq_url)
    out = [(True, f"RabbitMQ at {s.broker_location()} answers with the configured credentials "
                  f"(virtual host {where!r})")]
    if s.rabbitmq_management_url:
        out.append((True, f"RabbitMQ management API at {s.rabbitmq_management_url} answers: in-flight and "
                          "held delayed messages are visible (statistics, a few seconds behind)"))
    else:
        out.append((True, WITHOUT_MANAGEMENT))
    for q in demand.queues:
        flight = f"{q.in_flight} in flight{'' if q.in_flight_known else ' (estimated)'}"
        out.append((True, f"queue {q.queue} (virtual host {where!r}): {q.ready} ready, {q.consumers} "
                          f"consumers, {flight}, {q.delayed} delayed, {q.dead} dead-lettered"))
    return out

"""The demand data model, the fake probe, error wording, and that building the real probe does no I/O."""

from __future__ import annotations

import asyncio

import dramatiq.brokers.redis
import pytest
from hypothesis import given
from hypothesis import strategies as st

from dqagent.broker.redis import HEARTBEAT_TIMEOUT_MS, RedisDemandProbe, describe_failure
from dqagent.core.demand import Demand, DemandProbe, QueueDemand
from dqagent.errors import BrokerError
from dqagent.settings.config import QueueMetric, parse_settings
from tests.unit.fakes import FakeDemandProbe

counts = st.integers(min_value=0, max_value=10**6)
queue_demands = st.builds(QueueDemand, queue=st.sampled_from(["a", "b", "c"]), ready=counts,
                          outstanding=counts, delayed=counts, dead=counts, orphaned=counts)


def test_in_flight_is_outstanding_minus_ready_never_negative() -> None:
    assert QueueDemand("q", ready=3, outstanding=10, delayed=0, dead=0, orphaned=0).in_flight == 7
    # The two reads are not atomic with Dramatiq's own scripts' view: LLEN may exceed HLEN for an instant.
    assert QueueDemand("q", ready=5, outstanding=4, delayed=0, dead=0, orphaned=0).in_flight == 0


@given(st.lists(queue_demands, max_size=5))
def test_demand_figures_are_sums_over_queues(queues: list[QueueDemand]) -> None:
    d = Demand(tuple(queues))
    assert d.ready == sum(q.ready for q in queues)
    assert d.outstanding == sum(q.outstanding for q in queues)
    assert d.in_flight == sum(q.in_flight for q in queues)
    assert d.delayed == sum(q.delayed for q in queues)
    assert d.dead == sum(q.dead for q in queues)
    assert d.orphaned == sum(q.orphaned for q in queues)
    assert d.queue_length(QueueMetric.OUTSTANDING) == d.outstanding
    assert d.queue_length(QueueMetric.READY) == d.ready


def test_queue_length_does_not_add_orphans_or_delayed() -> None:
    d = Demand((QueueDemand("q", ready=2, outstanding=9, delayed=4, dead=1, orphaned=3),))
    assert d.queue_length(QueueMetric.OUTSTANDING) == 9  # the 3 orphans are among the 9 already
    assert d.queue_length(QueueMetric.READY) == 2


def test_heartbeat_timeout_is_dramatiqs() -> None:
    assert HEARTBEAT_TIMEOUT_MS == dramatiq.brokers.redis.DEFAULT_HEARTBEAT_TIMEOUT == 60_000


def test_fake_probe_returns_demand_raises_on_demand_and_models_recovery() -> None:
    fake = FakeDemandProbe()
    probe: DemandProbe = fake
    fake.set_queue("a", ready=2, outstanding=6, orphaned=3)
    fake.set_queue("b", ready=1)

    async def scenario() -> None:
        d = await probe.fetch_demand()
        assert (d.ready, d.outstanding, d.in_flight, d.orphaned) == (3, 7, 4, 3)
        fake.error = BrokerError("Redis at redis://h:6379/0: no answer within 5 s")
        with pytest.raises(BrokerError):
            await probe.fetch_demand()
        with pytest.raises(BrokerError):
            await probe.recover_orphans()
        fake.error = None
        assert await probe.recover_orphans() == 3
        d = await probe.fetch_demand()
        assert (d.ready, d.outstanding, d.orphaned) == (6, 7, 0)
        assert await probe.recover_orphans() == 0
        await probe.close()

    asyncio.run(scenario())
    assert (fake.fetch_calls, fake.recover_calls, fake.closed) == (3, 3, True)


def test_set_queue_replaces_a_queue_in_place_of_adding_it() -> None:
    fake = FakeDemandProbe()
    fake.set_queue("a", ready=1)
    fake.set_queue("a", ready=4, outstanding=5)
    assert [(q.queue, q.ready, q.outstanding) for q in fake.demand.queues] == [("a", 4, 5)]


@pytest.mark.parametrize("values", [
    {"REDIS_URL": "redis://:pa%24%24word@redis.example:6380/2"},
    {"REDIS_URL": "rediss://user:pa$$word@redis.example:6380/2"},
    {"REDIS_HOST": "redis.example", "REDIS_PASSWORD": "pa$$word"},
])
def test_failure_text_never_holds_the_password(values: dict[str, str]) -> None:
    settings = parse_settings(values)
    for exc in (ConnectionError("AUTH pa$$word failed\nsecond line"), OSError("pa%24%24word"),
                TimeoutError()):
        text = describe_failure(exc, settings)
        assert "pa$$word" not in text and "pa%24%24word" not in text
        assert "\n" not in text
        assert text.startswith(f"Redis at {settings.redis_location()}: ")


def test_timeout_failure_says_how_long() -> None:
    settings = parse_settings({"REDIS_TIMEOUT": "1.5"})
    text = describe_failure(TimeoutError(), settings)
    assert text == "Redis at redis://localhost:6379/0: no answer within 1.5 s"


@pytest.mark.parametrize("url", ["", "redis://:pw@127.0.0.1:1/0", "rediss://:pw@127.0.0.1:1/0",
                                 "unix:///nonexistent/redis.sock"])
def test_building_and_closing_the_real_probe_does_no_io(url: str) -> None:
    # Port 1 / a missing socket: any connection attempt would fail loudly.
    settings = parse_settings({"REDIS_URL": url, "REDIS_HOST": "127.0.0.1", "REDIS_PORT": "1"})

    async def scenario() -> None:
        probe = RedisDemandProbe(settings)
        await probe.close()

    asyncio.run(scenario())

"""Fleet mode in the loop: settings, and three agents over one fake fleet store and one demand.

The fake store models what Redis does for the records (one clock, expiry at the TTL, a partition as an
error on every call); the Redis store has its own test against a real redis-server
(tests/integration/test_fleet.py).
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from dqagent.agent.lifecycle import Agent
from dqagent.broker.fleetstore import FleetCoordinator, host_id, record_ttl_ms
from dqagent.core.fleet import FleetView, Member
from dqagent.core.policies import TargetPolicy
from dqagent.core.reconciler import Backoff
from dqagent.errors import BrokerError, ConfigError
from dqagent.settings.config import Settings, parse_settings
from dqagent.settings.workercmd import worker_shape
from dqagent.sim.fleetstore import MemoryFleetStore
from tests.unit.fakes import Clock, FakeDemandProbe, FakeUnits, RecordingNotifier
from tests.unit.logged import events

BASE = {"MIN_PROCESSES": "1", "MAX_PROCESSES": "4", "CHECK_INTERVAL": "1", "PROCESS_STARTUP_DELAY": "0",
        "GRACEFUL_SHUTDOWN_TIMEOUT": "1", "SCALING_POLICY": "target", "TARGET_PER_WORKER": "10",
        "DRAMATIQ_COMMAND": "/bin/sleep infinity", "REDIS_TIMEOUT": "1", "FLEET": "f",
        "GUARD": "off"}  # the guard would read this host's real pressure (tests/unit/test_guard.py covers it)


def settings(host: str, **kw: str) -> Settings:
    return parse_settings({**BASE, "FLEET_HOST_ID": host, **kw})


def agent(host: str, store: MemoryFleetStore, probe: FakeDemandProbe, clock: Clock, **kw: str) -> Agent:
    s = settings(host, **kw)
    policy = TargetPolicy.from_settings(s, worker_shape(s.dramatiq_command, 1))
    return Agent(s, FakeUnits(running=[1]), probe, RecordingNotifier(), policy, clock=clock,
                 fleet=FleetCoordinator(lambda _s: store))


def pool(a: Agent) -> int:
    units: FakeUnits = a.units  # type: ignore[assignment]
    return sum(1 for u in units.units.values() if u.active == "active")


async def burst(agents: list[Agent], store: MemoryFleetStore, probe: FakeDemandProbe, clock: Clock,
                ready: int = 60) -> None:
    """The fleet is formed (one idle round, every host at its MIN), then `ready` messages arrive."""
    probe.set_queue("q", ready=0)
    await rounds(agents, store, clock, 1)
    probe.set_queue("q", ready=ready)


async def rounds(agents: list[Agent], store: MemoryFleetStore, clock: Clock, n: int) -> None:
    """`n` polls of every agent, one after the other (their own phases), 1 s apart."""
    for _ in range(n):
        for a in agents:
            await a.tick()
            await a.jobs.wait()
        clock.now += 1
        store.now_ms += 1000


def test_settings_are_validated_in_one_line() -> None:
    s = parse_settings({})
    assert (s.fleet, s.fleet_weight, s.fleet_host_id) == ("", None, "")
    assert parse_settings({"FLEET": "prod", "FLEET_WEIGHT": "3", "FLEET_HOST_ID": "web-1"}).fleet_weight == 3
    for key, value, hint in (("FLEET", "a b", "letters"), ("FLEET_WEIGHT", "0", "1..1000"),
                             ("FLEET_WEIGHT", "x", "1..1000"), ("FLEET_HOST_ID", "h/1", "machine-id")):
        with pytest.raises(ConfigError, match=hint) as info:
            parse_settings({key: value})
        assert info.value.key == key and "\n" not in str(info.value)


def test_host_id_comes_from_the_setting_or_the_machine_id(tmp_path: Path) -> None:
    mid = tmp_path / "machine-id"
    mid.write_text("0123abcd\n")
    assert host_id(parse_settings({}), mid) == "0123abcd"
    assert host_id(parse_settings({"FLEET_HOST_ID": "x"}), mid) == "x"
    with pytest.raises(ConfigError, match=r"FLEET_HOST_ID.*unreadable"):
        host_id(parse_settings({}), tmp_path / "missing")


def test_the_record_ttl_is_a_few_polls() -> None:
    assert record_ttl_ms(settings("a")) == 4000  # 3 polls of 1 s + REDIS_TIMEOUT 1 s


def test_three_agents_run_the_fleets_total_not_three_times_it(caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> None:
        store, clock, probe = MemoryFleetStore(), Clock(1000.0), FakeDemandProbe()
        agents = [agent(h, store, probe, clock) for h in ("a", "b", "c")]
        caplog.set_level(logging.INFO)
        await burst(agents, store, probe, clock)  # 60 outstanding at 10 per worker: 6 workers
        await rounds(agents, store, clock, 1)
        assert sum(pool(a) for a in agents) == 6  # within one poll of each host
        await rounds(agents, store, clock, 2)
        assert sum(pool(a) for a in agents) == 6
        assert sorted(pool(a) for a in agents) == [2, 2, 2]
        # And then no host acts.
        calls = [len(a.units.calls) for a in agents]  # type: ignore[attr-defined]
        await rounds(agents, store, clock, 3)
        assert [len(a.units.calls) for a in agents] == calls  # type: ignore[attr-defined]
        line = events(caplog, "decision")[-1]
        assert (line.FLEET, line.FLEET_TARGET, line.SHARE) == ("f", 6, 2)  # type: ignore[attr-defined]

    asyncio.run(scenario())


def test_independent_agents_would_run_three_times_as_many() -> None:
    async def scenario() -> None:
        store, clock, probe = MemoryFleetStore(), Clock(1000.0), FakeDemandProbe()
        agents = [agent(h, store, probe, clock, FLEET="") for h in ("a", "b", "c")]
        await burst(agents, store, probe, clock)
        await rounds(agents, store, clock, 3)
        assert sum(pool(a) for a in agents) == 12  # each takes the whole 6, capped at its MAX 4

    asyncio.run(scenario())


def test_a_dead_host_drops_out_at_its_ttl_and_the_others_take_its_share() -> None:
    async def scenario() -> None:
        store, clock, probe = MemoryFleetStore(), Clock(1000.0), FakeDemandProbe()
        agents = [agent(h, store, probe, clock) for h in ("a", "b", "c")]
        await burst(agents, store, probe, clock)
        await rounds(agents, store, clock, 3)
        alive = agents[:2]  # c dies with its workers: it stops publishing
        await rounds(alive, store, clock, 3)
        assert sum(pool(a) for a in alive) == 4  # its record still counts for 4 s
        await rounds(alive, store, clock, 3)
        assert sum(pool(a) for a in alive) == 6

    asyncio.run(scenario())


def test_a_partitioned_host_keeps_its_workers_and_never_scales_up() -> None:
    async def scenario() -> None:
        store, clock, probe = MemoryFleetStore(), Clock(1000.0), FakeDemandProbe()
        agents = [agent(h, store, probe, clock) for h in ("a", "b", "c")]
        await burst(agents, store, probe, clock)
        await rounds(agents, store, clock, 3)
        cut = agents[2]
        real_store = store
        blocked = MemoryFleetStore()
        blocked.error = BrokerError("Redis at redis://x: ConnectionError")
        cut.fleet = FleetCoordinator(lambda _s: blocked)
        probe.set_queue("q", ready=200)  # more demand: the cut host must not react to it
        for _ in range(8):
            assert await cut.tick() > 0
            await rounds(agents[:2], real_store, clock, 1)
        assert pool(cut) == 2
        assert sum(pool(a) for a in agents[:2]) == 8  # the others run the whole (now capped) G of 2 x 4

    asyncio.run(scenario())


def test_stopping_an_agent_removes_its_record_at_once() -> None:
    async def scenario() -> None:
        store, clock, probe = MemoryFleetStore(), Clock(1000.0), FakeDemandProbe()
        agents = [agent(h, store, probe, clock) for h in ("a", "b", "c")]
        await burst(agents, store, probe, clock)
        await rounds(agents, store, clock, 2)
        agents[2].under_systemd = False  # as in a terminal: the stop stops the workers
        agents[2].stop_requested.set()
        await agents[2]._shutdown()
        assert {m.host for m in store.live()} == {"a", "b"}
        await rounds(agents[:2], store, clock, 2)
        assert sum(pool(a) for a in agents[:2]) == 6

    asyncio.run(scenario())


def test_without_a_host_id_the_agent_holds_its_workers(tmp_path: Path) -> None:
    """A reload that sets FLEET on a host with no id (FLEET_HOST_ID empty, no /etc/machine-id) changes nothing."""
    async def scenario() -> None:
        probe = FakeDemandProbe()
        probe.set_queue("q", ready=60)
        s = settings("")
        policy = TargetPolicy.from_settings(s, worker_shape(s.dramatiq_command, 1))
        store = MemoryFleetStore()
        a = Agent(s, FakeUnits(running=[1, 2]), probe, RecordingNotifier(), policy, clock=Clock(1000.0),
                  fleet=FleetCoordinator(lambda _s: store, machine_id=tmp_path / "missing"))
        assert await a.tick() > 0
        await a.jobs.wait()
        assert pool(a) == 2 and store.records == {}
        assert "FLEET_HOST_ID" in a.reporter.redis_error

    asyncio.run(scenario())


def test_a_start_check_that_fails_during_the_fleet_read_holds_this_checks_starts() -> None:
    # The fleet read is a wait: a start batch's check may fail meanwhile and set the crash-loop backoff. The
    # check decides with the backoff as it is after the wait (as the agent did before the decision step).
    class FailingMeanwhile(MemoryFleetStore):
        async def sync(self, me: Member | None) -> FleetView:
            a.jobs.backoff = Backoff().after_failure(clock.now)  # what the job table does on a failed check
            return await super().sync(me)

    async def scenario() -> None:
        probe.set_queue("q", ready=60)
        await a.tick()
        await a.jobs.wait()

    store, clock, probe = FailingMeanwhile(), Clock(1000.0), FakeDemandProbe()
    a = agent("a", store, probe, clock)
    asyncio.run(scenario())
    assert pool(a) == 1  # held: no start in this check

"""The loop with several pools, with fakes for systemd and Redis (the bench tests run real ones).

Asserts what an operator sees: which units are started and stopped, the journal events with their pool,
STATUS=, and that a burst on one pool's queue leaves the other pool's units alone.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from dqagent.agent.lifecycle import Agent
from dqagent.agent.pools import policies
from dqagent.agent.reload import Reloader
from dqagent.core.policies import StepPolicy
from dqagent.settings.config import parse_settings
from dqagent.settings.pools import Pool, parse_pools
from dqagent.settings.sources import Loaded
from tests.unit.fakes import Clock, FakeDemandProbe, FakeUnits, RecordingNotifier
from tests.unit.logged import events

HOST = {"GUARD": "off", "MIN_PROCESSES": "1", "MAX_PROCESSES": "5", "CHECK_INTERVAL": "1",
        "PROCESS_STARTUP_DELAY": "0", "GRACEFUL_SHUTDOWN_TIMEOUT": "1", "DRAMATIQ_QUEUE_NAME": "q"}
IO = {"DRAMATIQ_QUEUE_NAME": "io", "MIN_PROCESSES": "1", "MAX_PROCESSES": "4", "CHECK_INTERVAL": "1",
      "PROCESS_STARTUP_DELAY": "0", "GRACEFUL_SHUTDOWN_TIMEOUT": "1", "DRAMATIQ_COMMAND": "/bin/sleep infinity"}


def pools_of(host: dict[str, str], **files: dict[str, str]) -> tuple[Pool, ...]:
    return parse_pools(parse_settings(host), host, {name: (Path(f"/etc/dqagent/pools.d/{name}.env"), values)
                                                     for name, values in files.items()})


def make(units: FakeUnits, probe: FakeDemandProbe, pools: tuple[Pool, ...], clock: Clock,
         **kw: object) -> Agent:
    s = pools[0].settings
    return Agent(s, units, probe, RecordingNotifier(), StepPolicy.from_settings(s), clock=clock, pools=pools,
                 **kw)  # type: ignore[arg-type]


async def settle(agent: Agent) -> None:
    for run in agent.runs.values():
        await run.jobs.wait()


def started(units: FakeUnits) -> list[str]:
    return [u for verb, names in units.calls if verb == "start" for u in names]


def stopped(units: FakeUnits) -> list[str]:
    return [u for verb, names in units.calls if verb == "stop" for u in names]


def test_a_burst_on_one_pools_queue_scales_only_that_pool(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    units = FakeUnits(running=[1, ("io", 1)])
    probe = FakeDemandProbe()
    probe.set_queue("q", ready=0)
    probe.set_queue("io", ready=40)  # > 1 x 5: the io pool grows
    clock = Clock(1000.0)
    agent = make(units, probe, pools_of(HOST, io=IO), clock)
    io_pid = units.units[1].pid

    async def scenario() -> None:
        await agent.tick()
        await settle(agent)
        clock.now += 1
        await agent.tick()
        await settle(agent)

    asyncio.run(scenario())
    assert started(units) == ["dramatiq-worker@io-2.service", "dramatiq-worker@io-3.service"]
    assert stopped(units) == []
    assert units.units[1].pid == io_pid  # the default pool's worker untouched
    ups = events(caplog, "scale_up")
    assert ups and all(e.DQAGENT_POOL == "io" for e in ups)
    decisions = {e.DQAGENT_POOL for e in events(caplog, "decision")}
    assert decisions == {"default", "io"}
    status = [line for line in agent.notifier.sent if line.startswith("STATUS=")][-1]  # type: ignore[attr-defined]
    assert status.startswith("STATUS=default: 1 running") and " | io: " in status


def test_the_host_budget_goes_to_the_higher_priority_pool_and_back(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    host = {**HOST, "HOST_MAX_PROCESSES": "5", "MAX_PROCESSES": "5"}
    io = {**IO, "MAX_PROCESSES": "5", "POOL_PRIORITY": "10"}
    units = FakeUnits(running=[1, 2, 3, 4, ("io", 1)])
    probe = FakeDemandProbe()
    probe.set_queue("q", ready=100)
    probe.set_queue("io", ready=0)
    clock = Clock(1000.0)
    agent = make(units, probe, pools_of(host, io=io), clock)

    def counts() -> tuple[int, int]:
        default = sum(1 for k in units.units if isinstance(k, int))
        return default, len(units.units) - default

    async def tick() -> None:
        await agent.tick()
        await settle(agent)
        clock.now += 1
        assert sum(counts()) <= 5, counts()

    async def scenario() -> list[tuple[int, int]]:
        seen = []
        for _ in range(3):
            await tick()
        seen.append(counts())  # the default pool took the free room: 4 + 1
        probe.set_queue("io", ready=200)  # the higher-priority pool bursts
        for _ in range(8):
            await tick()
        seen.append(counts())
        probe.set_queue("io", ready=0)
        for _ in range(12):
            await tick()
        seen.append(counts())
        return seen

    seen = asyncio.run(scenario())
    assert agent.latest is not None
    figures = {p.name: p for p in agent.latest.pools}
    assert list(figures) == ["default", "io"] and agent.latest.host_max_processes == 5
    assert figures["io"].priority == 10 and figures["io"].share == 1 and figures["default"].share == 4
    assert seen[0] == (4, 1)
    assert seen[1] == (1, 4)  # io got its share first; the default pool kept its MIN
    assert seen[2][0] >= 3  # the burst over, the default pool grew back
    yields = events(caplog, "budget_yield")
    assert yields and {e.DQAGENT_POOL for e in yields} == {"default"}
    assert all(e.DQAGENT_TO_POOLS == "io" for e in yields)


def test_a_pool_not_due_is_not_decided_but_keeps_its_room() -> None:
    io = {**IO, "CHECK_INTERVAL": "60"}
    units = FakeUnits(running=[1, ("io", 1)])
    probe = FakeDemandProbe()
    probe.set_queue("q", ready=0)
    probe.set_queue("io", ready=40)
    clock = Clock(1000.0)
    agent = make(units, probe, pools_of(HOST, io=io), clock)

    async def scenario() -> float:
        first = await agent.tick()  # both pools decide at the first check
        await settle(agent)
        clock.now += 1
        await agent.tick()  # only the default pool is due (io reads every 60 s)
        await settle(agent)
        return first

    assert asyncio.run(scenario()) == 1.0
    assert started(units) == ["dramatiq-worker@io-2.service"]


def test_a_reload_adds_changes_and_removes_pools(caplog: pytest.LogCaptureFixture, tmp_path: Path) -> None:
    caplog.set_level(logging.INFO)
    host = dict(HOST)
    files: dict[str, dict[str, str]] = {"io": dict(IO)}
    units = FakeUnits(running=[1, ("io", 1), ("io", 2)])
    probe = FakeDemandProbe()
    probe.set_queue("q", ready=0)
    probe.set_queue("io", ready=0)
    clock = Clock(1000.0)

    def read() -> Loaded:
        pools = pools_of(host, **files)
        return Loaded(pools[0].settings, tmp_path / "dqagent.env", "", pools=pools)

    agent = make(units, probe, read().pools, clock,
                 reloader=Reloader(read, lambda s, pools=(): probe, None))  # type: ignore[arg-type, return-value]

    async def scenario() -> None:
        await agent.tick()
        await settle(agent)
        files["batch"] = {**IO, "DRAMATIQ_QUEUE_NAME": "batch", "MIN_PROCESSES": "2"}
        files["io"] = {**IO, "MAX_PROCESSES": "1"}
        agent.reload_requested.set()
        await agent.apply_reload()
        clock.now += 1
        await agent.tick()
        await settle(agent)
        assert sorted(k for k in units.units if not isinstance(k, int)) == [("batch", 1), ("batch", 2), ("io", 1)]
        del files["batch"]
        await agent.apply_reload()
        assert agent.runs["batch"].retiring  # stopped from the next check on, not by the reload itself
        for _ in range(2):  # the check that stops its workers, then the one that finds them gone
            clock.now += 1
            await agent.tick()
            await settle(agent)

    asyncio.run(scenario())
    assert "batch" not in agent.runs
    assert sorted(k for k in units.units if not isinstance(k, int)) == [("io", 1)]
    assert [e.DQAGENT_POOL for e in events(caplog, "pool_added")] == ["batch"]
    assert [e.DQAGENT_POOL for e in events(caplog, "pool_removed")] == ["batch"]
    assert any("pool batch added" in r.getMessage() for r in events(caplog, "reloaded"))


def test_a_bad_pool_file_on_reload_changes_nothing(caplog: pytest.LogCaptureFixture, tmp_path: Path) -> None:
    files: dict[str, dict[str, str]] = {"io": dict(IO)}
    units = FakeUnits(running=[1, ("io", 1)])
    probe = FakeDemandProbe()
    clock = Clock(1000.0)

    def read() -> Loaded:
        pools = pools_of(HOST, **files)
        return Loaded(pools[0].settings, tmp_path / "dqagent.env", "", pools=pools)

    agent = make(units, probe, read().pools, clock,
                 reloader=Reloader(read, lambda s, pools=(): probe, None))  # type: ignore[arg-type, return-value]
    files["io"] = {**IO, "MAX_PROCESSES": "many"}
    before = agent.runs["io"].s
    asyncio.run(agent.apply_reload())
    assert agent.runs["io"].s is before
    failed = events(caplog, "reload_failed")
    assert failed and "io.env: MAX_PROCESSES" in str(getattr(failed[0], "KEY", ""))


def test_units_of_an_undeclared_pool_are_left_alone_and_named_once(caplog: pytest.LogCaptureFixture) -> None:
    units = FakeUnits(running=[1, ("old", 1)])
    probe = FakeDemandProbe()
    probe.set_queue("q", ready=0)
    agent = make(units, probe, pools_of(HOST), Clock(1000.0))

    async def scenario() -> None:
        await agent.tick()
        await agent.tick()
        await settle(agent)

    asyncio.run(scenario())
    assert ("old", 1) in units.units and not stopped(units)
    assert [e.DQAGENT_POOL for e in events(caplog, "undeclared_pool")] == ["old"]


def test_a_pool_with_a_command_dramatiq_rejects_names_its_file() -> None:
    from dqagent.errors import ConfigError

    bad = {**IO, "DRAMATIQ_COMMAND": "python -m dramatiq --processes zero app"}
    with pytest.raises(ConfigError, match=r"io\.env"):
        policies(pools_of(HOST, io=bad)[1:])



def test_in_fleet_mode_each_pool_shares_its_own_global_target() -> None:
    from dqagent.broker.fleetstore import FleetCoordinator
    from dqagent.sim.fleetstore import MemoryFleetStore

    stores: dict[str, MemoryFleetStore] = {}

    def store_for(s: object) -> MemoryFleetStore:
        fleet = s.fleet  # type: ignore[attr-defined]
        return stores.setdefault(fleet, MemoryFleetStore(fleet))

    probe = FakeDemandProbe()
    probe.set_queue("q", ready=0)
    probe.set_queue("io", ready=0)
    clock = Clock(1000.0)
    hosts = []
    for host in ("a", "b"):
        h = {**HOST, "FLEET": "f", "FLEET_HOST_ID": host, "MAX_PROCESSES": "4"}
        pools = pools_of(h, io={**IO, "MAX_PROCESSES": "4"})
        hosts.append(make(FakeUnits(running=[1, ("io", 1)]), probe, pools, clock,
                          fleet=FleetCoordinator(store_for)))

    async def scenario() -> None:
        for _ in range(2):
            for a in hosts:
                await a.tick()
                await settle(a)
        probe.set_queue("io", ready=60)  # 60 > 2 hosts' 2 workers x 5: io's fleet grows, the default's does not
        for _ in range(4):
            clock.now += 1
            for a in hosts:
                await a.tick()
                await settle(a)

    asyncio.run(scenario())
    assert set(stores) == {"f", "f/io"}
    assert {m.host for m in stores["f/io"].live()} == {"a", "b"}
    for a in hosts:
        units: FakeUnits = a.units  # type: ignore[assignment]
        assert sum(1 for k in units.units if isinstance(k, int)) == 1  # the default pool at its MIN
        assert sum(1 for k in units.units if not isinstance(k, int)) > 1  # io grew on both hosts
    assert [m.target for m in stores["f"].live()] == [1, 1]


def test_a_pool_whose_dropins_are_not_installed_is_named(caplog: pytest.LogCaptureFixture, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from dqagent.core.units import pool_dropin

    monkeypatch.setattr("dqagent.agent.pools.UNIT_DIR", tmp_path)
    installed = pool_dropin("io", 1, tmp_path)
    installed.parent.mkdir(parents=True)
    installed.write_text("[Service]\n")
    batch = {**IO, "DRAMATIQ_QUEUE_NAME": "batch"}
    make(FakeUnits(), FakeDemandProbe(), pools_of(HOST, io=IO, batch=batch), Clock(1000.0))
    assert [e.DQAGENT_POOL for e in events(caplog, "pool_not_installed")] == ["batch"]  # type: ignore[attr-defined]


def test_a_pool_files_install_only_change_on_reload_is_named(caplog: pytest.LogCaptureFixture,
                                                             tmp_path: Path) -> None:
    files: dict[str, dict[str, str]] = {"io": dict(IO)}
    probe = FakeDemandProbe()

    def read() -> Loaded:
        pools = pools_of(HOST, **files)
        return Loaded(pools[0].settings, tmp_path / "dqagent.env", "", pools=pools)

    agent = make(FakeUnits(running=[1, ("io", 1)]), probe, read().pools, Clock(1000.0),
                 reloader=Reloader(read, lambda s, pools=(): probe, None))  # type: ignore[arg-type, return-value]
    files["io"] = {**IO, "WORKER_MEMORY_MAX": "1G", "GRACEFUL_SHUTDOWN_TIMEOUT": "30"}
    asyncio.run(agent.apply_reload())
    (needs,) = events(caplog, "reload_needs_install")
    assert needs.KEYS == "pool io: GRACEFUL_SHUTDOWN_TIMEOUT,pool io: WORKER_MEMORY_MAX"  # type: ignore[attr-defined]
    assert agent.runs["io"].s.graceful_shutdown_timeout_s == 1  # kept until install, as the default pool's

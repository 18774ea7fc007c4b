"""The guard's host reads (PSI, meminfo, GUARD_PROC_DIR) and its place in the loop: a hold logged once when it
starts and once when it ends, STATUS=, scale-down untouched; a worker killed for memory is its own event."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from dqagent.agent.lifecycle import Agent
from dqagent.core.policies import Policy, StepPolicy, make_policy
from dqagent.core.step import Host
from dqagent.host.pressure import HostGuard, parse_meminfo, parse_psi, read_host
from dqagent.settings.config import Settings, parse_settings
from dqagent.settings.workercmd import worker_shape
from tests.unit.fakes import FakeDemandProbe, FakeUnits, RecordingNotifier
from tests.unit.logged import events

CPU = "some avg10={:.2f} avg60=1.00 avg300=0.50 total=123456\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=0\n"
MEMORY = "some avg10={:.2f} avg60=0.00 avg300=0.00 total=1\nfull avg10={:.2f} avg60=0.00 avg300=0.00 total=1\n"
MEMINFO = "MemTotal:       {total} kB\nMemFree:         1000 kB\nMemAvailable:   {available} kB\nBuffers: 1 kB\n"


def write_host(d: Path, cpu: float = 0, mem_some: float = 0, mem_full: float = 0,
               available_kb: int = 8_000_000, total_kb: int = 16_000_000) -> None:
    (d / "pressure").mkdir(exist_ok=True)
    (d / "pressure" / "cpu").write_text(CPU.format(cpu))
    (d / "pressure" / "memory").write_text(MEMORY.format(mem_some, mem_full))
    (d / "meminfo").write_text(MEMINFO.format(total=total_kb, available=available_kb))


def test_psi_and_meminfo_parse_as_the_kernel_writes_them() -> None:
    assert parse_psi(CPU.format(63.25)) == {"some": 63.25, "full": 0.0}
    assert parse_psi("garbage\nsome total=1\n") == {}
    assert parse_meminfo(MEMINFO.format(total=2048, available=1024)) == (1024 * 1024, 2048 * 1024)
    assert parse_meminfo("MemTotal: 5 kB\n") == (None, 5120)


def test_a_missing_psi_file_disables_that_part_only(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    write_host(tmp_path, cpu=90, mem_some=1)
    (tmp_path / "pressure" / "cpu").unlink()
    s = parse_settings({"GUARD_PROC_DIR": str(tmp_path)})
    reading = read_host(s, [300, 100, 200])
    assert reading.headroom.cpu_some is None and reading.headroom.memory_some == 1
    assert set(reading.missing) == {"cpu"} and reading.headroom.worker_bytes == 300
    guard = HostGuard()
    caplog.set_level(logging.WARNING)
    guard.warn_missing(s)
    guard.warn_missing(s)  # once, not per call
    missing = events(caplog, "guard_source_missing")
    assert [r.__dict__["RESOURCE"] for r in missing] == ["cpu"]


def test_an_unreadable_files_path_is_kept_whole_even_with_a_colon_in_it(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The reason is a record (path, why), not "path: why" split again on its first colon."""
    proc = tmp_path / "host:1"
    proc.mkdir()
    write_host(proc)
    (proc / "meminfo").unlink()
    s = parse_settings({"GUARD_PROC_DIR": str(proc)})
    caplog.set_level(logging.WARNING)
    HostGuard().warn_missing(s)
    (warning,) = [r for r in caplog.records if getattr(r, "DQAGENT_EVENT", "") == "guard_source_missing"]
    assert warning.__dict__["PATH"] == f"{proc}/meminfo"
    assert warning.getMessage().startswith(f"guard: meminfo unreadable ({proc}/meminfo: No such file or directory)")


def test_without_measured_workers_the_per_worker_limit_is_the_size(tmp_path: Path) -> None:
    write_host(tmp_path, total_kb=1_000_000)
    s = parse_settings({"GUARD_PROC_DIR": str(tmp_path), "WORKER_MEMORY_MAX": "10%"})
    assert read_host(s, []).headroom.worker_bytes == 102_400_000
    assert read_host(s, [5]).headroom.worker_bytes == 5


def test_cpu_pressure_holds_a_scale_up_logs_once_and_releases(tmp_path: Path,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    write_host(tmp_path, cpu=63)
    s = parse_settings({"MIN_PROCESSES": "1", "MAX_PROCESSES": "7", "SCALING_POLICY": "target",
                        "TARGET_PER_WORKER": "10", "PROCESS_STARTUP_DELAY": "0", "GUARD_CPU_PRESSURE": "40",
                        "GUARD_PROC_DIR": str(tmp_path)})
    units, probe = FakeUnits(running=[1, 2, 3, 4]), FakeDemandProbe()
    probe.set_queue("q", ready=70)  # wants 7 (SCALE_UP_MAX_STEP 4 allows 4 -> 7)
    notifier = RecordingNotifier()
    agent = Agent(s, units, probe, notifier, _target(s))
    caplog.set_level(logging.DEBUG)

    async def scenario() -> None:
        for _ in range(3):
            await agent.tick()
            await agent.jobs.wait()
        assert sorted(units.units) == [1, 2, 3, 4] and units.calls == []
        status = [x for x in notifier.sent if x.startswith("STATUS=")][-1]
        assert "guard: cpu pressure 63% > 40%, holding at 4 of 7 wanted" in status
        write_host(tmp_path, cpu=12)
        await agent.tick()
        await agent.jobs.wait()
        assert sorted(units.units) == [1, 2, 3, 4, 5, 6, 7]
        probe.set_queue("q", ready=0)
        write_host(tmp_path, cpu=99)  # scale-down is never held
        for _ in range(2):
            await agent.tick()
            await agent.jobs.wait()
        assert len(units.units) < 7

    asyncio.run(scenario())
    blocked, released = events(caplog, "guard_blocked"), events(caplog, "guard_released")
    assert len(blocked) == 1 and len(released) == 1
    assert (blocked[0].__dict__["RESOURCE"], blocked[0].__dict__["FIGURE"], blocked[0].__dict__["LIMIT"]) == (
        "cpu", 63.0, 40.0)
    assert (released[0].__dict__["RESOURCE"], released[0].__dict__["FIGURE"]) == ("cpu", 12.0)


def _target(s: Settings) -> Policy:
    return make_policy(s, "target", shape=worker_shape(s.dramatiq_command, 2))


def test_memory_room_adds_only_the_workers_that_fit(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # 1.5 GB available, reserve 0.5 GB, workers measured at 400-500 MB: 2 more fit of the 4 wanted
    write_host(tmp_path, available_kb=1_500_000)
    s = parse_settings({"MIN_PROCESSES": "1", "MAX_PROCESSES": "8", "SCALING_POLICY": "target",
                        "TARGET_PER_WORKER": "10", "GUARD_MEMORY_RESERVE": "512000K",
                        "GUARD_PROC_DIR": str(tmp_path)})
    units, probe = FakeUnits(running=[1, 2]), FakeDemandProbe()
    units.units[1].memory, units.units[2].memory = 400_000_000, 500_000_000
    probe.set_queue("q", ready=60)
    agent = Agent(s, units, probe, RecordingNotifier(), _target(s))
    caplog.set_level(logging.INFO)

    async def scenario() -> None:
        await agent.tick()
        await agent.jobs.wait()

    asyncio.run(scenario())
    assert sorted(units.units) == [1, 2, 3, 4]
    (blocked,) = events(caplog, "guard_blocked")
    assert blocked.__dict__["RESOURCE"] == "memory_available" and blocked.__dict__["WANTED"] == 6


def test_guard_off_reads_nothing_and_holds_nothing(tmp_path: Path) -> None:
    write_host(tmp_path, cpu=100, mem_some=100, mem_full=100, available_kb=0)
    s = parse_settings({"GUARD": "off", "GUARD_PROC_DIR": str(tmp_path), "MAX_PROCESSES": "3"})
    units, probe = FakeUnits(running=[1]), FakeDemandProbe()
    probe.set_queue("q", ready=100)
    agent = Agent(s, units, probe, RecordingNotifier(), StepPolicy.from_settings(s))
    reads: list[int] = []
    original = agent.guard.read

    async def counted(settings: Settings) -> Host:
        reads.append(1)
        return await original(settings)

    agent.guard.read = counted  # type: ignore[method-assign]

    async def scenario() -> None:
        await agent.tick()  # 100 > 1 x 5: +1, a scale-up the host figures above would hold
        await agent.jobs.wait()

    asyncio.run(scenario())
    assert reads == [] and agent.guard.last is None and agent.guard.holding is None
    assert sorted(units.units) == [1, 2]


def test_a_worker_killed_for_memory_is_its_own_event_and_counted(caplog: pytest.LogCaptureFixture) -> None:
    s = parse_settings({"GUARD": "off", "MIN_PROCESSES": "2", "MAX_PROCESSES": "2", "PROCESS_STARTUP_DELAY": "0"})
    units, probe = FakeUnits(running=[1, 2]), FakeDemandProbe()
    probe.set_queue("q", ready=0)
    agent = Agent(s, units, probe, RecordingNotifier(), StepPolicy.from_settings(s))
    caplog.set_level(logging.INFO)
    units.crash(2, result="oom-kill")  # systemd: Result=oom-kill, auto-restart
    units.crash(1, result="exit-code")

    async def scenario() -> None:
        await agent.tick()
        await agent.tick()  # still the same failure: not logged again

    asyncio.run(scenario())
    (oom,) = events(caplog, "worker_oom_killed")
    assert oom.__dict__["UNIT"] == "dramatiq-worker@2.service" and oom.__dict__["RESULT"] == "oom-kill"
    assert [r.__dict__["UNIT"] for r in events(caplog, "worker_failed")] == ["dramatiq-worker@1.service"]
    assert agent.counters.oom_kills == 1


def test_status_shows_the_figures_and_the_agents_hold(tmp_path: Path) -> None:
    from dqagent.cli.status import _guard_lines, guard_report

    write_host(tmp_path, cpu=63.2, mem_some=1.5)
    s = parse_settings({"GUARD_PROC_DIR": str(tmp_path), "GUARD_CPU_PRESSURE": "40"})
    g = guard_report(s, [100 * 1024**2], 4, "4 running of 4 wanted; guard: cpu pressure 63% > 40%, holding at 4 of "
                     "7 wanted; queue 70, next check in 5s")
    assert (g["cpu_some_avg10"], g["memory_some_avg10"], g["worker_bytes"]) == (63.2, 1.5, 100 * 1024**2)
    assert g["one_more_worker"] == "cpu pressure 63% > 40%"
    assert g["agent_holding"] == "guard: cpu pressure 63% > 40%, holding at 4 of 7 wanted"
    text = "\n".join(_guard_lines(g))
    assert "cpu some 63.2% (limit 40%)" in text and "the agent: guard: cpu pressure" in text

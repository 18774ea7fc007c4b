"""`dqagent status` and `scale-up/-down --pool` with several pools: what the report holds, how the text reads.

systemd and Redis are stand-ins here (what they return is given); the real ones are read in
tests/integration/test_status_pools.py.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any, ClassVar

import pytest

from dqagent.cli import status
from dqagent.cli.main import main
from dqagent.cli.status_text import render_text
from dqagent.core.demand import Demand, QueueDemand
from dqagent.core.units import ActiveState, UnitState, parse_worker
from dqagent.errors import SystemdError
from dqagent.settings import sources

#: The keys the old manager's scripts read at the top level (tests/integration/test_status_cli.py).
OLD_KEYS = {"queue_length", "current_processes", "min_processes", "max_processes", "scale_up_threshold",
            "scale_down_threshold", "monitoring_active", "process_list"}


def running(unit: str, pid: int, restarts: int = 0) -> UnitState:
    parsed = parse_worker(unit)
    assert parsed is not None
    return UnitState(unit=unit, instance=parsed[1], active_state=ActiveState.ACTIVE, sub_state="running",
                     main_pid=pid, active_enter_us=1_700_000_000_000_000, n_restarts=restarts, result="success",
                     has_job=False, pool=parsed[0])


class Systemd:
    """`SystemdClient` for `collect`: the units given, one listing counted."""

    states: ClassVar[list[UnitState]] = []
    listings = 0
    error: SystemdError | None = None

    def __init__(self, bus_address: str | None, call_timeout_s: float) -> None:
        pass

    async def connect(self) -> None:
        if Systemd.error is not None:
            raise Systemd.error

    async def worker_states(self, brief: object = None) -> list[UnitState]:
        Systemd.listings += 1
        return list(Systemd.states)

    async def unit_property(self, unit: str, interface: str, name: str) -> Any:
        return {"ActiveState": "active", "StatusText": "5 running", "ExecMainCode": 0, "ExecMainStatus": 0}[name]

    async def worker_memory(self) -> list[int]:
        return []

    def close(self) -> None:
        pass


class Broker:
    """`RedisDemandProbe` for `collect`: each probe's queues, and the figures given."""

    probes: ClassVar[list[tuple[str, ...]]] = []
    ready: ClassVar[dict[str, int]] = {}

    def __init__(self, settings: Any) -> None:
        self.queues = settings.queue_names
        Broker.probes.append(self.queues)

    async def fetch_demand(self) -> Demand:
        return Demand(tuple(QueueDemand(queue=q, ready=Broker.ready.get(q, 0), outstanding=Broker.ready.get(q, 0),
                                        delayed=0, dead=0, orphaned=0) for q in self.queues))

    async def close(self) -> None:
        pass


@pytest.fixture
def host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """dqagent.env (the default pool: queue `main`) and pools.d/io.env (queues `io`, `io2`); returns the env file."""
    env = tmp_path / "dqagent.env"
    env.write_text("DRAMATIQ_QUEUE_NAME=main\nMIN_PROCESSES=1\nMAX_PROCESSES=4\nGUARD=off\nREDIS_PASSWORD_FILE=\n"
                   "HOST_MAX_PROCESSES=9\n")
    (tmp_path / "pools.d").mkdir()
    (tmp_path / "pools.d" / "io.env").write_text(
        'DRAMATIQ_QUEUE_NAME=io,io2\nDRAMATIQ_COMMAND="/bin/sleep infinity"\nMIN_PROCESSES=0\nMAX_PROCESSES=5\n'
        "SCALING_POLICY=target\nTARGET_PER_WORKER=10\nPOOL_PRIORITY=7\n")
    monkeypatch.setattr(status, "SystemdClient", Systemd)
    monkeypatch.setattr("dqagent.broker.redis.RedisDemandProbe", Broker)  # status_broker imports it when it reads
    Systemd.states = [running("dramatiq-worker@1.service", 11), running("dramatiq-worker@2.service", 12),
                      running("dramatiq-worker@io-1.service", 21), running("dramatiq-worker@io-3.service", 23),
                      running("dramatiq-worker@gone-1.service", 31)]
    Systemd.listings, Systemd.error = 0, None
    Broker.probes, Broker.ready = [], {"main": 6, "io": 30, "io2": 12}
    return env


def collect(env: Path) -> dict[str, Any]:
    loaded = sources.load(env, environ={}, command="status")
    return json.loads(status.render_json(asyncio.run(status.collect(loaded, None))))


def test_json_keeps_the_old_keys_for_the_default_pool_and_adds_every_pool(host: Path) -> None:
    report = collect(host)
    # The top level: the default pool, as before pools (the io pool's units and queues are not in it)
    assert set(report) >= OLD_KEYS
    assert (report["queue_length"], report["current_processes"]) == (6, 2)
    assert (report["min_processes"], report["max_processes"]) == (1, 4)
    assert [p["unit"] for p in report["process_list"]] == ["dramatiq-worker@1.service", "dramatiq-worker@2.service"]
    assert list(report["queues"]) == ["main"]
    assert report["host_max_processes"] == 9 and report["monitoring_active"] is True
    # pools: every pool, the default one first, each with the same keys
    assert list(report["pools"]) == ["default", "io"]
    for part in report["pools"].values():
        assert set(part) == set(status.POOL_KEYS) and set(part) <= set(report)
    assert {k: report[k] for k in status.POOL_KEYS} == report["pools"]["default"]
    io = report["pools"]["io"]
    assert (io["queue_length"], io["current_processes"], io["min_processes"], io["max_processes"]) == (42, 2, 0, 5)
    assert list(io["queues"]) == ["io", "io2"] and io["queues"]["io"]["ready"] == 30
    assert [p["unit"] for p in io["process_list"]] == ["dramatiq-worker@io-1.service", "dramatiq-worker@io-3.service"]
    assert (io["scaling_policy"], io["pool_priority"]) == ("target", 7)
    assert (io["scale_up_threshold"], io["scale_down_threshold"]) == pytest.approx((24.0, 16.0))
    assert io["settings_file"] == str(host.parent / "pools.d" / "io.env")
    # A unit of a pool no file declares: listed apart, counted nowhere
    [gone] = report["undeclared_workers"]
    assert (gone["unit"], gone["pool"], gone["pid"]) == ("dramatiq-worker@gone-1.service", "gone", 31)


def test_one_listing_of_systemd_and_one_broker_read_for_all_pools(host: Path) -> None:
    collect(host)
    assert Systemd.listings == 1
    assert Broker.probes == [("main", "io", "io2")]


def test_text_has_a_block_per_pool_and_notes_undeclared_units(host: Path) -> None:
    text = render_text(collect(host))
    lines = text.splitlines()
    assert "pools: 2 (default, io), workers running: 4, host max: 9" in lines
    default_at = lines.index(f"--- pool default ({host}), priority 0 ---")
    io_at = lines.index(f"--- pool io ({host.parent / 'pools.d' / 'io.env'}), priority 7 ---")
    assert default_at < io_at
    assert lines[default_at + 1:default_at + 3] == ["queue length (outstanding): 6",
                                                    "  main: ready 6, in flight 0, delayed 0, dead-lettered 0, "
                                                    "orphaned 0, nothing waiting"]
    assert "current workers: 2" in lines[io_at:] and "scale-up threshold (target policy): 24" in lines[io_at:]
    assert any(line.startswith("  dramatiq-worker@io-3.service  pid 23") for line in lines[io_at:])
    assert not any("io-" in line for line in lines[default_at:io_at])
    note = next(i for i, line in enumerate(lines) if line.startswith("undeclared pools (gone): 1 worker units"))
    assert lines[note + 1] == "  dramatiq-worker@gone-1.service  pid 31  running"
    assert text.count("agent (dqagent.service): active: 5 running") == 1


def test_one_pool_reads_as_before_pools(host: Path) -> None:
    (host.parent / "pools.d" / "io.env").unlink()
    Systemd.states = Systemd.states[:2]
    report = collect(host)
    assert list(report["pools"]) == ["default"]
    without = {k: v for k, v in report.items() if k not in ("pools", "undeclared_workers", "host_max_processes",
                                                             "pool_priority")}
    assert render_text(report) == render_text(without)
    assert "--- pool" not in render_text(report) and "current workers: 2" in render_text(report)


def test_systemd_unavailable_leaves_every_pool_unread(host: Path) -> None:
    Systemd.error = SystemdError("org.freedesktop.DBus.Error.NoServer", "no bus")
    report = collect(host)
    assert report["systemd_error"] and report["current_processes"] is None
    assert all(p["current_processes"] is None and p["process_list"] == [] for p in report["pools"].values())
    assert "workers running: unavailable" in render_text(report)


def test_scale_with_an_unknown_pool_is_one_line_and_exit_78(host: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for command in ("scale-up", "scale-down"):
        assert main(["--env-file", str(host), command, "--pool", "nosuch"]) == 78
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "--pool" in err and "nosuch" in err and "default, io" in err, err

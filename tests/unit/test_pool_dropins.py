"""What `dqagent install` renders and writes for the pools of pools.d: per-instance drop-ins (systemd 252 reads
no `dramatiq-worker@io-.service.d/`), a per-pool child slice, and nothing of a pool whose file is gone."""

from __future__ import annotations

import dataclasses
import os
import pwd
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from dqagent.core.units import MAX_INSTANCE, parse_worker
from dqagent.errors import ConfigError
from dqagent.settings import sources
from dqagent.settings.pools import Pool
from dqagent.setup import pooldropins, poolinstall
from dqagent.setup.files import Report
from dqagent.setup.reach import dqagent_executable

from .test_rendered_files import parse_unit

UNITS = Path(__file__).resolve().parents[2] / "packaging" / "systemd"


def _pools(tmp_path: Path, **files: str) -> tuple[Pool, ...]:
    (tmp_path / "dqagent.env").write_text("DRAMATIQ_QUEUE_NAME=main\n")
    (tmp_path / "pools.d").mkdir(exist_ok=True)
    for name, text in files.items():
        (tmp_path / "pools.d" / f"{name}.env").write_text(text)
    return sources.load(tmp_path / "dqagent.env", environ={}).pools


def test_each_instance_number_of_a_pool_gets_the_pools_user_directory_timeout_slice_and_memory(tmp_path: Path) -> None:
    pools = _pools(tmp_path, io="DRAMATIQ_QUEUE_NAME=io\nWORKER_USER=nobody\nWORKER_DIRECTORY=/srv/io\n"
                   "GRACEFUL_SHUTDOWN_TIMEOUT=90\nWORKER_MEMORY_MAX=2G\nPOOL_CPU_QUOTA=150%\nPOOL_MEMORY_MAX=8G\n")
    files = pooldropins.rendered(Path("/u"), pools)
    instances = {p for p in files if p.name == pooldropins.POOL_DROPIN}
    assert instances == {Path(f"/u/dramatiq-worker@io-{n}.service.d/60-dqagent-pool.conf")
                         for n in range(1, MAX_INSTANCE + 1)}
    assert all(parse_worker(p.parent.name.removesuffix(".d")) is not None for p in instances)
    text = files[Path("/u/dramatiq-worker@io-7.service.d/60-dqagent-pool.conf")]
    assert text.startswith(pooldropins.POOL_MARK + "\n")
    assert parse_unit(text) == [("Service", k, v) for k, v in (
        ("Environment", "DQAGENT_POOL=io"), ("User", "nobody"), ("WorkingDirectory", "-/srv/io"),
        ("TimeoutStopSec", "90s"), ("Slice", "system-dramatiq\\x2dworker-io.slice"), ("MemoryAccounting", "yes"),
        ("MemoryMax", str(2 * 1024**3)), ("MemoryHigh", "infinity"))]
    slice_text = files[Path("/u/system-dramatiq\\x2dworker-io.slice.d/50-dqagent-limits.conf")]
    assert parse_unit(slice_text) == [("Slice", "MemoryMax", str(8 * 1024**3)), ("Slice", "CPUQuota", "150%"),
                                      ("Slice", "TasksMax", "33%")]
    assert len(files) == MAX_INSTANCE + 1  # the default pool's are the template's own


def test_a_pool_file_sorts_after_the_templates_limits_so_its_memory_limits_win() -> None:
    from dqagent.core.units import POOL_DROPIN
    from dqagent.setup.layout import LIMITS_DROPIN

    assert sorted([LIMITS_DROPIN, POOL_DROPIN])[-1] == POOL_DROPIN  # systemd applies drop-ins in name order


def test_a_value_a_unit_cannot_carry_is_refused_naming_the_pool_file_and_key(tmp_path: Path) -> None:
    (pool,) = _pools(tmp_path, io="DRAMATIQ_QUEUE_NAME=io\n")[1:]
    bad = dataclasses.replace(pool, settings=dataclasses.replace(pool.settings, worker_user="x\nExecStartPre=+/bin/sh"))
    with pytest.raises(ConfigError, match=f"{tmp_path}/pools.d/io.env: WORKER_USER"):
        pooldropins.rendered(Path("/u"), [bad])


def test_user_refusals_name_a_missing_user_and_root(tmp_path: Path) -> None:
    (pool,) = _pools(tmp_path, io="DRAMATIQ_QUEUE_NAME=io\nWORKER_USER=no_such_user_x\n")[1:]
    assert "WORKER_USER=no_such_user_x does not exist" in poolinstall.user_refusal(pool.settings)
    root = dataclasses.replace(pool.settings, worker_user="root")
    assert "uid 0" in poolinstall.user_refusal(root)
    assert poolinstall.user_refusal(dataclasses.replace(root, allow_root_workers=True)) == ""


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="install's helpers chown: run as root (as ./dev/test does)")


def _plan(pools: tuple[Pool, ...], unit_dir: Path) -> poolinstall.Planned:
    return poolinstall.plan(pools[1:], unit_dir, dqagent_executable(), (UNITS / "dqagent.service").read_text(),
                            (UNITS / "dramatiq-worker@.service").read_text())


@pytest.fixture
def run_dir() -> Iterator[Path]:
    """A directory outside /tmp (which the units' PrivateTmp= hides, so preflight refuses it)."""
    with tempfile.TemporaryDirectory(dir="/run") as d:
        os.chmod(d, 0o755)
        yield Path(d)


@needs_root
def test_install_writes_a_pool_once_then_nothing_and_removes_only_its_own_files_of_a_pool_gone(
        tmp_path: Path, run_dir: Path) -> None:
    units = tmp_path / "units"
    units.mkdir()
    me = pwd.getpwuid(os.getuid()).pw_name
    both = _pools(tmp_path, io=f"DRAMATIQ_QUEUE_NAME=io\nWORKER_USER={me}\nWORKER_DIRECTORY={run_dir}/io\n"
                  "ALLOW_ROOT_WORKERS=yes\nDRAMATIQ_COMMAND=/bin/sleep infinity\n",
                  cpu=f"DRAMATIQ_QUEUE_NAME=cpu\nWORKER_USER={me}\nALLOW_ROOT_WORKERS=yes\n"
                  f"WORKER_DIRECTORY={run_dir}/cpu\nDRAMATIQ_COMMAND=/bin/sleep infinity\n")
    planned = _plan(both, units)
    assert planned.refusals == ()
    report = Report([], [])
    assert poolinstall.write_all(both[1:], planned, units, report) == ""
    assert [line.split(" (")[0] for line in report.changed] == [f"created {run_dir}/cpu", f"created {run_dir}/io",
                                                               "wrote 1001 drop-ins of pool cpu",
                                                               "wrote 1001 drop-ins of pool io"]
    again = Report([], [])
    assert poolinstall.write_all(both[1:], _plan(both, units), units, again) == "" and again.changed == []
    # An operator's file in one of the directories, and one under our name elsewhere, are never removed
    (units / "dramatiq-worker@cpu-3.service.d" / "10-mine.conf").write_text("[Service]\n")
    (units / "dramatiq-worker@cpu-4.service.d" / pooldropins.POOL_DROPIN).write_text("[Service]\n")
    (tmp_path / "pools.d" / "cpu.env").unlink()
    only_io = sources.load(tmp_path / "dqagent.env", environ={}).pools
    gone = Report([], [])
    assert poolinstall.write_all(only_io[1:], _plan(only_io, units), units, gone) == ""
    assert gone.changed == ["removed 1000 drop-ins of pools no file in pools.d declares any more"]
    left = sorted(p.name for p in units.iterdir() if "cpu" in p.name)
    assert left == ["dramatiq-worker@cpu-3.service.d", "dramatiq-worker@cpu-4.service.d"]
    assert len(pooldropins.installed(units)) == MAX_INSTANCE + 1  # io's
    assert poolinstall.remove_stale(units, []) == MAX_INSTANCE + 1  # uninstall
    assert sorted(p.name for p in units.iterdir()) == left


@needs_root
def test_a_file_of_the_operators_under_a_pool_drop_ins_name_refuses_the_install(tmp_path: Path) -> None:
    units = tmp_path / "units"
    (units / "dramatiq-worker@io-9.service.d").mkdir(parents=True)
    (units / "dramatiq-worker@io-9.service.d" / pooldropins.POOL_DROPIN).write_text("[Service]\nUser=me\n")
    planned = _plan(_pools(tmp_path, io="DRAMATIQ_QUEUE_NAME=io\n"), units)
    assert len(planned.refusals) == 1 and "dramatiq-worker@io-9.service.d" in planned.refusals[0]
    assert "not written by dqagent install" in planned.refusals[0]

"""Resource-limit settings: systemd's accepted forms, one-line errors, and the drop-ins install renders."""

from __future__ import annotations

import pytest

from dqagent.errors import ConfigError
from dqagent.settings.config import DEFAULT_POOL_TASKS_MAX, parse_settings
from dqagent.setup.layout import (
    SLICE_LIMITS_FILE,
    WORKER_LIMITS_FILE,
    WORKER_SLICE,
    limits_summary,
    ours,
    rendered_limits,
)


@pytest.mark.parametrize(("raw", "rendered"), [
    ("1G", "1073741824"), ("512M", "536870912"), ("1.5G", "1610612736"), ("2048", "2048"), ("1t", str(1024**4)),
    ("20%", "20%"), ("0.5%", "0.5%"), ("infinity", "infinity"), ("", ""),
])
def test_memory_limits_take_systemds_forms_and_render_them_exactly(raw: str, rendered: str) -> None:
    assert parse_settings({"WORKER_MEMORY_MAX": raw}).worker_memory_max == rendered
    assert parse_settings({"POOL_MEMORY_MAX": raw}).pool_memory_max == rendered


@pytest.mark.parametrize(("key", "raw", "says"), [
    ("WORKER_MEMORY_MAX", "1Q", "K, M, G or T"), ("WORKER_MEMORY_MAX", "0", "K, M, G or T"),
    ("WORKER_MEMORY_MAX", "101%", "(0, 100]"), ("WORKER_MEMORY_MAX", "0%", "(0, 100]"),
    ("POOL_MEMORY_MAX", "-1G", "K, M, G or T"),
    ("POOL_CPU_QUOTA", "300", "percentage >= 1%"), ("POOL_CPU_QUOTA", "0%", "percentage >= 1%"),
    ("POOL_TASKS_MAX", "0", "number of tasks >= 1"), ("POOL_TASKS_MAX", "lots", "number of tasks >= 1"),
    ("GUARD", "maybe", "on or off"), ("GUARD_CPU_PRESSURE", "0", "(0, 100]"),
    ("GUARD_MEMORY_PRESSURE", "101", "(0, 100]"), ("GUARD_MEMORY_RESERVE", "", "0 for none"),
    ("GUARD_MEMORY_RESERVE", "-5%", "0 for none"), ("GUARD_PROC_DIR", "proc", "absolute path"),
])
def test_bad_values_are_one_line_naming_the_setting_and_the_range(key: str, raw: str, says: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_settings({key: raw})
    text = str(info.value)
    assert "\n" not in text and text.startswith(f"invalid {key}=") and says in text, text


def test_memory_high_must_come_before_memory_max() -> None:
    with pytest.raises(ConfigError, match=r"invalid WORKER_MEMORY_HIGH='2G'.*less than WORKER_MEMORY_MAX=1G"):
        parse_settings({"WORKER_MEMORY_MAX": "1G", "WORKER_MEMORY_HIGH": "2G"})
    assert parse_settings({"WORKER_MEMORY_MAX": "1G", "WORKER_MEMORY_HIGH": "900M"}).worker_memory_high == str(
        900 * 1024**2)


def test_defaults_set_no_limit_and_a_conservative_guard() -> None:
    s = parse_settings({})
    assert (s.worker_memory_max, s.worker_memory_high, s.pool_memory_max, s.pool_cpu_quota) == ("", "", "", "")
    assert (s.guard, s.guard_memory_pressure, s.guard_cpu_pressure, s.guard_memory_reserve) == (True, 10, 50, "10%")
    assert parse_settings({"GUARD": "off"}).guard is False


def test_rendered_drop_ins_carry_exactly_the_limits_set() -> None:
    s = parse_settings({"WORKER_MEMORY_MAX": "1G", "WORKER_MEMORY_HIGH": "768M", "POOL_CPU_QUOTA": "300%",
                        "POOL_TASKS_MAX": "200", "POOL_MEMORY_MAX": "50%"})
    files = rendered_limits(s)
    worker, pool = files[WORKER_LIMITS_FILE], files[SLICE_LIMITS_FILE]
    assert worker is not None and pool is not None
    assert worker.splitlines()[2:] == ["[Service]", "MemoryAccounting=yes", "MemoryMax=1073741824",
                                       "MemoryHigh=805306368"]
    assert pool.splitlines()[2:] == ["[Slice]", "MemoryMax=50%", "CPUQuota=300%", "TasksMax=200"]
    assert str(SLICE_LIMITS_FILE) == "/etc/systemd/system/system-dramatiq\\x2dworker.slice.d/50-dqagent-limits.conf"
    assert WORKER_SLICE == "system-dramatiq\\x2dworker.slice"
    assert "CPUQuota=300%" in limits_summary(s)


def test_without_pool_limits_the_slice_still_gets_the_default_tasks_max() -> None:
    """A runaway pool (a fork bomb in a task) never takes every task of the host."""
    s = parse_settings({})
    files = rendered_limits(s)
    assert s.pool_tasks_max == DEFAULT_POOL_TASKS_MAX == "33%"
    assert (files[SLICE_LIMITS_FILE] or "").splitlines()[2:] == ["[Slice]", "TasksMax=33%"]
    assert files[WORKER_LIMITS_FILE] is not None and "MemoryMax" not in files[WORKER_LIMITS_FILE]
    assert limits_summary(s) == f"per worker no limit; pool ({WORKER_SLICE}) TasksMax=33% (default)"


@pytest.mark.parametrize(("raw", "rendered"), [("500", "TasksMax=500"), ("infinity", "TasksMax=infinity"),
                                               ("10%", "TasksMax=10%")])
def test_an_explicit_pool_tasks_max_replaces_the_default(raw: str, rendered: str) -> None:
    s = parse_settings({"POOL_TASKS_MAX": raw})
    assert (rendered_limits(s)[SLICE_LIMITS_FILE] or "").splitlines()[2:] == ["[Slice]", rendered]
    assert limits_summary(s).endswith(f"pool ({WORKER_SLICE}) {rendered}")


def test_only_files_carrying_our_mark_are_ours(tmp_path: object) -> None:
    from pathlib import Path

    assert isinstance(tmp_path, Path)
    text = rendered_limits(parse_settings({}))[WORKER_LIMITS_FILE]
    assert text is not None
    mine, theirs = tmp_path / "mine.conf", tmp_path / "theirs.conf"
    mine.write_text(text)
    theirs.write_text("[Service]\nMemoryMax=1G\n")
    assert ours(mine) and not ours(theirs) and not ours(tmp_path / "missing.conf")

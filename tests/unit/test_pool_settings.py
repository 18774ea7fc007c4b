"""Pool files (`pools.d/<name>.env`): what is accepted, and the one-line refusals naming the file and key."""

from __future__ import annotations

from pathlib import Path

import pytest

from dqagent.errors import ConfigError
from dqagent.settings import sources
from dqagent.settings.config import parse_settings
from dqagent.settings.pools import parse_pools, pools_dir, read, values_for

HOST = {"DRAMATIQ_QUEUE_NAME": "q", "MIN_PROCESSES": "2", "MAX_PROCESSES": "6", "REDIS_PORT": "6380"}


def pools(files: dict[str, dict[str, str]], host: dict[str, str] | None = None) -> tuple[object, ...]:
    host = HOST if host is None else host
    return parse_pools(parse_settings(host), host, {n: (Path(f"/etc/dqagent/pools.d/{n}.env"), v)
                                                    for n, v in files.items()})


def test_a_pool_takes_its_own_keys_the_defaults_for_the_rest_and_the_hosts_shared_keys() -> None:
    (default, io) = pools({"io": {"DRAMATIQ_QUEUE_NAME": "io,mail", "MAX_PROCESSES": "3", "POOL_PRIORITY": "5"}})
    assert default.name == "default" and default.settings.min_processes == 2  # type: ignore[attr-defined]
    s = io.settings  # type: ignore[attr-defined]
    assert (s.queue_names, s.max_processes, s.pool_priority) == (("io", "mail"), 3, 5)
    assert s.min_processes == 1  # the documented default, not dqagent.env's 2
    assert s.redis_port == 6380  # host-wide: from dqagent.env


def test_predictive_is_a_pools_own_setting() -> None:
    (default, io) = pools({"io": {"DRAMATIQ_QUEUE_NAME": "io", "PREDICTIVE": "Shadow"}}, {**HOST, "PREDICTIVE": "on"})
    assert (default.settings.predictive, io.settings.predictive) == ("on", "shadow")  # type: ignore[attr-defined]


@pytest.mark.parametrize(("files", "names"), [
    ({"IO": {"DRAMATIQ_QUEUE_NAME": "io"}}, ("IO.env: pool name", "rename the file")),
    ({"default": {"DRAMATIQ_QUEUE_NAME": "io"}}, ("default.env: pool name",)),
    ({"a-b": {"DRAMATIQ_QUEUE_NAME": "io"}}, ("a-b.env: pool name",)),
    ({"io": {"DRAMATIQ_QUEUE_NAME": "io", "MAX_PROCESS": "3"}}, ("io.env: MAX_PROCESS", "unknown setting")),
    ({"io": {"DRAMATIQ_QUEUE_NAME": "io", "REDIS_HOST": "x"}}, ("io.env: REDIS_HOST", "host-wide")),
    ({"io": {"DRAMATIQ_QUEUE_NAME": "io", "MAX_PROCESSES": "0"}}, ("io.env: MAX_PROCESSES", "1..1000")),
    ({"io": {"MAX_PROCESSES": "3"}}, ("io.env: DRAMATIQ_QUEUE_NAME", "must name its queue")),
    ({"io": {"DRAMATIQ_QUEUE_NAME": "io", "PREDICTIVE": "yes"}}, ("io.env: PREDICTIVE", "off, shadow, on")),
    ({"io": {"DRAMATIQ_QUEUE_NAME": "x,q"}}, ("io.env: DRAMATIQ_QUEUE_NAME", "already served by pool 'default'")),
    ({"a": {"DRAMATIQ_QUEUE_NAME": "x"}, "b": {"DRAMATIQ_QUEUE_NAME": "x"}}, ("b.env", "pool 'a'")),
])
def test_bad_pool_files_are_refused_in_one_line_naming_file_and_key(files: dict[str, dict[str, str]],
                                                                    names: tuple[str, ...]) -> None:
    with pytest.raises(ConfigError) as raised:
        pools(files)
    message = str(raised.value)
    assert "\n" not in message and all(n in message for n in names), message


def test_the_host_budget_must_hold_every_pools_minimum() -> None:
    host = {**HOST, "HOST_MAX_PROCESSES": "3"}
    with pytest.raises(ConfigError, match=r"HOST_MAX_PROCESSES='3': expected an integer >= 4"):
        pools({"io": {"DRAMATIQ_QUEUE_NAME": "io", "MIN_PROCESSES": "2"}}, host)
    assert len(pools({"io": {"DRAMATIQ_QUEUE_NAME": "io", "MIN_PROCESSES": "1"}}, host)) == 2


def test_in_fleet_mode_each_pool_is_its_own_fleet() -> None:
    default, io = pools({"io": {"DRAMATIQ_QUEUE_NAME": "io"}}, {**HOST, "FLEET": "f"})
    assert default.settings.fleet == "f" and io.settings.fleet == "f/io"  # type: ignore[attr-defined]


def test_load_reads_the_pool_directory_beside_the_settings_file(tmp_path: Path) -> None:
    env = tmp_path / "dqagent.env"
    env.write_text("DRAMATIQ_QUEUE_NAME=q\n")
    (tmp_path / "pools.d").mkdir()
    (tmp_path / "pools.d" / "io.env").write_text("DRAMATIQ_QUEUE_NAME=io\n")
    (tmp_path / "pools.d" / "io.env.dpkg-old").write_text("garbage\n")  # not a pool file: ignored
    loaded = sources.load(env, environ={})
    assert [p.name for p in loaded.pools] == ["default", "io"]
    assert loaded.pool("io").settings.queue_names == ("io",)
    with pytest.raises(ConfigError, match=r"--pool='batch': expected one of: default, io"):
        loaded.pool("batch")
    assert pools_dir(None) is None and read(None) == {}


def test_an_unreadable_pool_file_is_named(tmp_path: Path) -> None:
    (tmp_path / "io.env").mkdir()  # unreadable as a file, even for root
    with pytest.raises(ConfigError, match=r"io\.env.*cannot read this pool file: Is a directory"):
        read(tmp_path)


def test_a_pool_file_that_is_no_text_is_named(tmp_path: Path) -> None:
    (tmp_path / "io.env").write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(ConfigError, match=r"io\.env.*cannot read this pool file: not UTF-8"):
        read(tmp_path)


def test_worker_exec_values_come_from_the_units_pool() -> None:
    files = {"io": (Path("/etc/dqagent/pools.d/io.env"), {"DRAMATIQ_COMMAND": "/bin/sleep 1"})}
    assert values_for("default", {"DRAMATIQ_COMMAND": "/bin/true"}, files)["DRAMATIQ_COMMAND"] == "/bin/true"
    assert values_for("io", {"DRAMATIQ_COMMAND": "/bin/true"}, files)["DRAMATIQ_COMMAND"] == "/bin/sleep 1"
    with pytest.raises(ConfigError, match="pool='batch'"):
        values_for("batch", {}, files)

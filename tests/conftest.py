from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator

import pytest
from hypothesis import settings

from testbed.nspawn import Container, require_bench
from testbed.redis import RedisServer

# Properties assert results, not speed: a loaded 2-core CI machine must not fail them on Hypothesis's
# default 200 ms per-example deadline (seen: 336 ms once, 42 ms on the retry).
settings.register_profile("dqagent", deadline=None)
settings.load_profile("dqagent")


def _container() -> Iterator[Container]:
    require_bench()
    c = Container()
    try:
        yield c
    finally:
        c.stop()


def _redis(password: str = "") -> Iterator[RedisServer]:
    require_bench()
    r = RedisServer(password=password)
    try:
        yield r
    finally:
        r.stop()


@pytest.fixture(scope="session")
def bench() -> Iterator[Container]:
    """One real systemd for the session (for tests that leave no state behind)."""
    yield from _container()


@pytest.fixture
def fresh_container() -> Iterator[Container]:
    """A real systemd of its own, for tests that install dqagent or break things."""
    yield from _container()


@pytest.fixture(scope="module")
def module_container() -> Iterator[Container]:
    """One real systemd for a test file whose tests share an installed agent (they reset what they change)."""
    yield from _container()


@pytest.fixture(scope="module")
def boot_container() -> Iterator[Callable[[], Container]]:
    """Boots one more real systemd per call, for a test file that needs several hosts (callable from
    several threads at once, to boot them concurrently); all are stopped after the file's last test."""
    require_bench()
    booted: list[Container] = []

    def boot() -> Container:
        c = Container()
        booted.append(c)
        return c

    try:
        yield boot
    finally:
        for c in booted:
            c.stop()


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    yield from _redis()


@pytest.fixture(scope="module")
def redis() -> Iterator[RedisServer]:
    """One private Redis for a test file whose tests share an agent (they reset what they set)."""
    yield from _redis()


@pytest.fixture
def redis_with_password() -> Iterator[RedisServer]:
    """A private Redis that requires a password (random, so finding it anywhere is a real leak)."""
    yield from _redis(password=f"pw-{uuid.uuid4().hex}")


#: Test files that each keep the machine busy for a minute or more (hundreds of units, real Dramatiq
#: bursts): run one after another on a single test worker, while the lighter files share the others.
HEAVY = frozenset({"test_reliability.py", "test_systemd_scale.py"})
#: An integration test that fails runs once more (pytest-rerunfailures; `-raR` names it under "rerun test
#: summary info"). The bench's systemd runs in nspawn on this machine's cgroup v1 kernel, which now
#: and then refuses a cgroup operation ("Failed to kill control group ... Input/output error", a unit's
#: process ending with 219/CGROUP: about one in a few hundred starts, more under parallel load): not
#: dqagent's behaviour. A test that fails twice fails the run. Unit tests never rerun. The marker wins over
#: pytest's own `--reruns`, so to see every first failure (hunting a flaky test) set DQAGENT_TEST_RERUNS=0.
INTEGRATION_RERUNS = int(os.environ.get("DQAGENT_TEST_RERUNS", "1"))


#: The longest groups first (minutes each, measured): xdist hands groups out in collection order, so a long one
#: collected last would run alone at the end of the suite.
LONG_FIRST = ("heavy", "test_predictive.py", "test_metrics.py", "test_rabbitmq.py", "test_busy_workers.py",
              "test_fleet.py", "test_pools.py")


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Group tests for `pytest -n N --dist loadgroup` (./dev/test): a file's tests stay on one worker,
    so module- and session-scoped containers are shared, and the heavy files never overlap; the longest groups
    are collected first (`LONG_FIRST`), each file's tests in their own order."""
    def rank(item: pytest.Item) -> int:
        group = "heavy" if item.path.name in HEAVY else item.path.name
        return LONG_FIRST.index(group) if group in LONG_FIRST else len(LONG_FIRST)

    items.sort(key=rank)
    for item in items:
        name = item.path.name
        item.add_marker(pytest.mark.xdist_group("heavy" if name in HEAVY else name))
        if "integration" in item.path.parts:
            item.add_marker(pytest.mark.flaky(reruns=INTEGRATION_RERUNS))

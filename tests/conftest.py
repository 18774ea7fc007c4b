from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from hypothesis import settings

from tests.bench import Container, RedisServer, require_bench

# Properties assert results, not speed: a loaded 2-core CI machine must not fail them on Hypothesis's
# default 200 ms per-example deadline (seen: 336 ms once, 42 ms on the retry).
settings.register_profile("dqagent", deadline=None)
settings.load_profile("dqagent")


@pytest.fixture(scope="session")
def bench() -> Iterator[Container]:
    """One real systemd for the session (for tests that leave no state behind)."""
    require_bench()
    c = Container()
    try:
        yield c
    finally:
        c.stop()


@pytest.fixture
def fresh_container() -> Iterator[Container]:
    """A real systemd of its own, for tests that install dqagent or break things."""
    require_bench()
    c = Container()
    try:
        yield c
    finally:
        c.stop()


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    require_bench()
    r = RedisServer()
    try:
        yield r
    finally:
        r.stop()


@pytest.fixture
def redis_with_password() -> Iterator[RedisServer]:
    """A private Redis that requires a password (random, so finding it anywhere is a real leak)."""
    require_bench()
    r = RedisServer(password=f"pw-{uuid.uuid4().hex}")
    try:
        yield r
    finally:
        r.stop()

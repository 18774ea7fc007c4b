"""Unit names reaching systemd come only from validated numbers; polkit refusals are recognised."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dqagent.systemd import refused_by_polkit, worker_instance, worker_unit


@given(st.integers(min_value=1, max_value=999_999))
def test_worker_unit_round_trips(n: int) -> None:
    assert worker_instance(worker_unit(n)) == n


@pytest.mark.parametrize("bad", [0, -1, 1_000_000, True, "1", 1.0, None])
def test_worker_unit_refuses_anything_but_a_positive_int(bad: object) -> None:
    with pytest.raises(ValueError):
        worker_unit(bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["dramatiq-worker@x.service", "dramatiq-worker@01.service",
                                  "dramatiq-worker@1.socket", "dramatiq-worker@1.service\n", "redis.service"])
def test_worker_instance_rejects_other_names(name: str) -> None:
    assert worker_instance(name) is None


@pytest.mark.parametrize(("result", "refused"), [
    ("error: org.freedesktop.DBus.Error.AccessDenied", True),
    ("job error: org.freedesktop.DBus.Error.InteractiveAuthorizationRequired", True),
    ("error: org.freedesktop.systemd1.NoSuchUnit", False),
    ("failed", False),
    ("timeout", False),
])
def test_refused_by_polkit(result: str, refused: bool) -> None:
    assert refused_by_polkit(result) is refused

"""Only validated instance numbers ever become unit names."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dqagent.errors import UnitNameError
from dqagent.systemd import refused_by_polkit, worker_instance, worker_unit


@given(st.integers(1, 999_999))
def test_round_trip(n: int) -> None:
    assert worker_instance(worker_unit(n)) == n


@pytest.mark.parametrize("bad", [0, -1, 1_000_000, True, "1", "x", 1.0, None])
def test_anything_else_is_refused(bad: object) -> None:
    with pytest.raises(UnitNameError):
        worker_unit(bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["dramatiq-worker@x.service", "dramatiq-worker@01.service",
                                  "dramatiq-worker@1.socket", "dramatiq-worker@1.service.d", "redis.service",
                                  "dramatiq-worker@1;x.service", "dramatiq-worker@.service"])
def test_foreign_names_are_not_managed(name: str) -> None:
    assert worker_instance(name) is None


@pytest.mark.parametrize(("result", "refused"), [
    ("error: org.freedesktop.DBus.Error.AccessDenied", True),
    ("job error: org.freedesktop.DBus.Error.InteractiveAuthorizationRequired", True),
    ("error: org.freedesktop.systemd1.NoSuchUnit", False),
    ("failed", False),
    ("timeout", False),
])
def test_polkit_refusal_is_told_apart_from_a_failed_unit(result: str, refused: bool) -> None:
    assert refused_by_polkit(result) is refused

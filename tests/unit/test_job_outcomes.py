"""A refusal is told from a failure by the outcome's error type: what `scale-up/-down` print and exit with."""

from __future__ import annotations

import asyncio

import pytest

from dqagent.settings.config import parse_settings
from dqagent.systemd.jobtable import scale_by
from tests.unit.fakes import FakeUnits

SETTINGS = parse_settings({"GUARD": "off", "MIN_PROCESSES": "0", "MAX_PROCESSES": "5", "PROCESS_STARTUP_DELAY": "0"})


@pytest.mark.parametrize(("error", "refused"), [
    ("org.freedesktop.DBus.Error.AccessDenied", True),
    ("org.freedesktop.DBus.Error.InteractiveAuthorizationRequired", True),
    ("org.freedesktop.systemd1.UnitMasked", False),
])
def test_scale_reports_a_polkit_refusal_as_refused_and_any_other_error_as_failed(error: str, refused: bool) -> None:
    units = FakeUnits(running=[1, 2])
    units.refuse = error
    up = asyncio.run(scale_by(units, SETTINGS, 1))
    down = asyncio.run(scale_by(units, SETTINGS, -1))
    assert (up.failed, up.refused, down.failed, down.refused) == (1, refused, 1, refused)
    assert up.lines == (f"dramatiq-worker@3.service: failed (job error: {error})",)
    assert down.lines == (f"dramatiq-worker@2.service: stop failed (error: {error})",)

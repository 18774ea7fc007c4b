"""The agent's events as a unit test captures them (caplog): records by their `DQAGENT_EVENT` field."""

from __future__ import annotations

import logging

import pytest


def events(caplog: pytest.LogCaptureFixture, name: str) -> list[logging.LogRecord]:
    """The captured records of event `name`, oldest first."""
    return [r for r in caplog.records if getattr(r, "DQAGENT_EVENT", "") == name]

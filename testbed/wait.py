"""Tests and dev scripts wait for an observable condition, never for a fixed time."""

from __future__ import annotations

import time
from collections.abc import Callable


def wait_until(what: str, predicate: Callable[[], object], timeout: float = 30, interval: float = 0.25) -> None:
    """Poll `predicate()` until truthy; fail naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for: {what}")

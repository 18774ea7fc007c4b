"""sd_notify: READY, RELOADING, STATUS, WATCHDOG, STOPPING, EXTEND_TIMEOUT_USEC.

A thin wrapper so the loop can be tested with an in-memory notifier (tests/unit/fakes.py). Outside systemd
(`$NOTIFY_SOCKET` unset) every call is a no-op. STATUS lines are kept ASCII because the
sdnotify package encodes latin-1.
"""

from __future__ import annotations

import os
import time
from typing import Protocol

import sdnotify


class Notifier(Protocol):
    def ready(self) -> None: ...
    def reloading(self) -> None: ...
    def status(self, line: str) -> None: ...
    def watchdog(self) -> None: ...
    def stopping(self) -> None: ...
    def extend_timeout(self, seconds: float) -> None: ...


def watchdog_interval_s(environ: dict[str, str] | None = None) -> float | None:
    """Half of `$WATCHDOG_USEC` when the watchdog is meant for this process, else None."""
    env = dict(os.environ) if environ is None else environ
    usec = env.get("WATCHDOG_USEC")
    pid = env.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        return int(usec) / 2_000_000
    except ValueError:
        return None


class SystemdNotifier:
    """Talks to `$NOTIFY_SOCKET` through the sdnotify package."""

    def __init__(self) -> None:
        self._enabled = bool(os.environ.get("NOTIFY_SOCKET"))
        self._n = sdnotify.SystemdNotifier() if self._enabled else None

    def _send(self, text: str) -> None:
        if self._n is not None:
            self._n.notify(text)

    def ready(self) -> None:
        self._send("READY=1")

    def reloading(self) -> None:
        """Start of a reload; READY=1 ends it. systemd 253+ requires MONOTONIC_USEC (252 ignores it)."""
        self._send(f"RELOADING=1\nMONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}")

    def status(self, line: str) -> None:
        safe = line.encode("ascii", "replace").decode("ascii").replace("\n", " ")
        self._send(f"STATUS={safe}")

    def watchdog(self) -> None:
        self._send("WATCHDOG=1")

    def stopping(self) -> None:
        self._send("STOPPING=1")

    def extend_timeout(self, seconds: float) -> None:
        self._send(f"EXTEND_TIMEOUT_USEC={int(seconds * 1_000_000)}")

"""Logging setup: journald with structured fields under systemd, readable lines in a terminal.

Events carry UPPER_SNAKE fields through `extra=` (for example `DQAGENT_EVENT=scale_up`,
`WORKERS=3`); `JournalHandler` turns them into journal fields, so
`journalctl -u dqagent DQAGENT_EVENT=scale_up` finds them. Each also carries the event's stable
`MESSAGE_ID=` from `dqagent.catalog`, which `journalctl -x` explains. The console and `LOG_FILE` get the
same events as one line each, with the fields appended as `key=value`.
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import sys
from pathlib import Path
from typing import Any

from dqagent.core.units import worker_pool
from dqagent.report import catalog
from dqagent.report.terminal import printable

#: Relative LOG_FILE paths are resolved against this directory (systemd's LogsDirectory=dqagent).
DEFAULT_LOG_DIR = Path(os.environ.get("LOGS_DIRECTORY", "/var/log/dqagent"))
_STANDARD = set(vars(logging.makeLogRecord({})))
#: Journal fields a line does not repeat: the event is shown as `event=`, its MESSAGE_ID follows from it.
_NOT_SHOWN = ("DQAGENT_EVENT", "MESSAGE_ID")


def event(name: str, **fields: Any) -> dict[str, Any]:
    """`extra=` for a log call: the event name, its catalog MESSAGE_ID, plus fields upper-cased for the journal.
    An event about one worker unit (`unit=`) also carries its pool (`DQAGENT_POOL=`), as every pool's record does."""
    out: dict[str, Any] = {"DQAGENT_EVENT": name}
    mid = catalog.message_id(name)
    if mid is not None:
        out["MESSAGE_ID"] = mid
    out.update({k.upper(): v for k, v in fields.items()})
    unit = fields.get("unit")
    if isinstance(unit, str) and "DQAGENT_POOL" not in out:
        pool = worker_pool(unit)
        if pool is not None:
            out["DQAGENT_POOL"] = pool
    return out


class FieldsFormatter(logging.Formatter):
    """One line: time, level, message, then the structured fields as key=value; control characters escaped."""

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extra = {k: v for k, v in vars(record).items()
                 if k not in _STANDARD and k.isupper() and k not in _NOT_SHOWN}
        event_name = getattr(record, "DQAGENT_EVENT", None)
        tail = (f" event={event_name}" if event_name else "") + "".join(
            f" {k.lower()}={v}" for k, v in extra.items())
        # One line (a traceback's lines joined), and no control character from outside text (a queue or
        # host name from Redis) reaches a terminal or LOG_FILE: `terminal.printable`.
        return printable((line + tail).replace("\n", " "))


def under_journal() -> bool:
    """True when stderr is connected to journald (systemd sets $JOURNAL_STREAM)."""
    stream = os.environ.get("JOURNAL_STREAM")
    if not stream:
        return False
    try:
        dev, ino = (int(x) for x in stream.split(":"))
        st = os.fstat(sys.stderr.fileno())
    except (ValueError, OSError):
        return False
    return (st.st_dev, st.st_ino) == (dev, ino)


def resolve_log_file(log_file: str) -> Path | None:
    """Where LOG_FILE goes: absolute as given, relative under the logs directory; "" disables it."""
    if not log_file:
        return None
    path = Path(log_file)
    return path if path.is_absolute() else DEFAULT_LOG_DIR / path


def setup(level: str, log_file: str, *, console: bool = True) -> str:
    """Configure the root logger; returns a note when LOG_FILE could not be opened."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    root.setLevel(level)
    # Libraries' chatter (redis-py's DEBUG handshake notes, asyncio) is not an operator's event.
    for name in ("redis", "dramatiq", "dbus_fast", "asyncio"):
        logging.getLogger(name).setLevel(logging.WARNING)
    # aiormq logs every failed connect (and frame dumps at DEBUG) on its own, once per retry: the probe turns
    # each failure into the agent's one de-duplicated `redis_error` event, so its lines would be noise.
    for name in ("aiormq", "pamqp"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    fmt = FieldsFormatter("%(asctime)s %(levelname)s %(message)s")
    if under_journal():
        from systemd.journal import JournalHandler

        root.addHandler(JournalHandler(SYSLOG_IDENTIFIER="dqagent"))
    elif console:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(fmt)
        root.addHandler(handler)
    note = ""
    path = resolve_log_file(log_file)
    if path is not None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            # Reopens the file when logrotate moves it away.
            file_handler = logging.handlers.WatchedFileHandler(path, encoding="utf-8")
        except OSError as exc:
            note = f"LOG_FILE {path} not writable ({exc.strerror}); logging to the journal/console only"
        else:
            file_handler.setFormatter(fmt)
            root.addHandler(file_handler)
    return note

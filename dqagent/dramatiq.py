"""`WorkerReport`: a Dramatiq middleware that tells dqagent what each worker process is doing.

Runs in the application's own environment: it imports only the standard library and Dramatiq (`pip install
dqagent` pulls in no agent dependency; the agent's own are the `dqagent[agent]` extra). One line in the app::

    from dqagent.dramatiq import WorkerReport
    broker.add_middleware(WorkerReport())

Under dqagent, systemd gives each worker unit a private runtime directory (`RuntimeDirectory=` in the
`dramatiq-worker@.service` template: `/run/dramatiq-worker/<instance>/`, in `$RUNTIME_DIRECTORY`, removed
when the unit stops). Each Dramatiq worker process (`--processes N`: N per unit) writes its own
`<pid>.json` there about once a second, atomically (write, then rename), from one daemon thread:

    {"pid": 123, "running": 2, "prefetched": 4, "threads": 8, "done": 0, "heartbeat": 1733530000.1}

`running`: messages its worker threads are processing; `prefetched`: messages fetched from the broker and
waiting in its work queue (not the delayed messages it holds); `heartbeat`: the wall-clock time of the
write. Both counts are read from Dramatiq's own work queue by the report thread, so the middleware has no
message hook at all: nothing runs in the message path, no I/O, no network, whatever the broker (`done`
stays 0: counting would need a hook). The report thread keeps beating during a long task, so a stale
heartbeat means the process is frozen or gone, not busy. Outside a dqagent unit (no `$RUNTIME_DIRECTORY`), in a
producer (no worker boots there) and in tests, it does nothing.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import time
from typing import Any

from dramatiq.middleware import Middleware

__all__ = ["REPORT_SUFFIX", "WorkerReport"]

#: The directory systemd makes for the unit (`RuntimeDirectory=dramatiq-worker/%i`).
RUNTIME_ENV = "RUNTIME_DIRECTORY"
REPORT_SUFFIX = ".json"
#: Reports are readable by the agent (another user): counts and a time, nothing secret.
REPORT_MODE = 0o644

log = logging.getLogger(__name__)


def report_directory(environ: dict[str, str] | os._Environ[str] | None = None) -> str | None:
    """The unit's report directory from `$RUNTIME_DIRECTORY` (several are `:`-separated: ours ends in the
    unit's instance under `dramatiq-worker/`), or None outside a dqagent unit."""
    value = (os.environ if environ is None else environ).get(RUNTIME_ENV, "")
    paths = [p for p in value.split(":") if p]
    ours = [p for p in paths if "/dramatiq-worker/" in p]
    found = ours or paths
    return found[0] if found else None


class WorkerReport(Middleware):
    """Reports this worker process's running and prefetched messages to dqagent (see the module docstring).

    `interval_s`: seconds between writes. `directory`: where to write (default `$RUNTIME_DIRECTORY`).
    """

    def __init__(self, interval_s: float = 1.0, directory: str | None = None) -> None:
        self.interval_s = interval_s
        self._directory = directory
        self._worker: Any = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._path: str | None = None
        self._warned = False

    # -- the worker's life: one writer thread ----------------------------------------------------

    def after_worker_boot(self, broker: Any, worker: Any) -> None:
        directory = self._directory or report_directory()
        if directory is None or not os.path.isdir(directory):
            return
        self._worker = worker
        self._path = os.path.join(directory, f"{os.getpid()}{REPORT_SUFFIX}")
        self._stop.clear()
        self._thread = threading.Thread(target=self._beat, name="dqagent-worker-report", daemon=True)
        self._thread.start()

    def before_worker_shutdown(self, broker: Any, worker: Any) -> None:
        self._stop.set()

    def after_worker_shutdown(self, broker: Any, worker: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2 * self.interval_s)
        if self._path is not None:
            with contextlib.suppress(OSError):
                os.unlink(self._path)

    def snapshot(self) -> dict[str, Any]:
        """What the next report says (also for the app's own tests), read from the worker's own work queue under
        its lock: `unfinished_tasks` counts every message put in and not yet done (waiting + running), the
        queue's length those still waiting (prefetched). Nothing is counted in the message path."""
        worker = self._worker
        waiting = unfinished = threads = 0
        if worker is not None:
            q = worker.work_queue
            with q.mutex:
                unfinished, waiting = q.unfinished_tasks, len(q.queue)
            threads = len(getattr(worker, "workers", ()))
        return {"pid": os.getpid(), "running": max(0, unfinished - waiting), "prefetched": waiting,
                "threads": threads, "done": 0, "heartbeat": round(time.time(), 3)}

    def _beat(self) -> None:
        while True:
            self.write()
            if self._stop.wait(self.interval_s):
                return

    def write(self) -> None:
        """One report, atomically (a reader never sees half a file); a failure is logged once, never raised."""
        path = self._path
        if path is None:
            return
        tmp = f"{path}.tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, REPORT_MODE)
            try:
                os.fchmod(fd, REPORT_MODE)  # (the unit's UMask= would narrow the mode given to open)
                os.write(fd, json.dumps(self.snapshot()).encode())
            finally:
                os.close(fd)
            os.replace(tmp, path)
        except OSError as exc:
            if not self._warned:
                self._warned = True
                log.warning("dqagent worker report not written to %s: %s", path, exc)

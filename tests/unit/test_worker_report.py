"""The app-side middleware (dqagent.dramatiq.WorkerReport) with Dramatiq's own StubBroker and Worker: its report
files say what runs and what waits, for sync and async actors, and it imports nothing of the agent."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import dramatiq
import pytest
from dramatiq.brokers.stub import StubBroker
from dramatiq.middleware.asyncio import AsyncIO

from dqagent.core.busy import parse_report
from dqagent.dramatiq import WorkerReport, report_directory
from dqagent.host.reports import read_unit
from testbed.wait import wait_until


def read(directory: Path) -> dict[str, int | float]:
    """The one report in `directory` ({} before the first write)."""
    files = list(directory.glob("*.json"))
    if not files:
        return {"running": -1, "prefetched": -1, "done": -1, "heartbeat": -1}
    assert [f.name for f in files] == [f"{os.getpid()}.json"], files
    report = parse_report(files[0].read_bytes())
    assert report is not None
    return json.loads(files[0].read_text())  # type: ignore[no-any-return]


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_the_report_counts_running_and_prefetched_messages(tmp_path: Path, kind: str) -> None:
    broker = StubBroker()
    broker.add_middleware(AsyncIO())
    report = WorkerReport(interval_s=0.05, directory=str(tmp_path))
    broker.add_middleware(report)
    release = threading.Event()

    if kind == "sync":
        @dramatiq.actor(broker=broker, queue_name="q")
        def task() -> None:
            release.wait(10)
    else:
        import asyncio

        @dramatiq.actor(broker=broker, queue_name="q")
        async def task() -> None:
            while not release.is_set():
                await asyncio.sleep(0.01)

    worker = dramatiq.Worker(broker, worker_threads=2, worker_timeout=50)
    worker.start()
    try:
        for _ in range(5):
            task.send()
        # Then 2 run (two threads) and 2 wait in the worker's work queue (prefetch is 2 x threads = 4 unacked
        # messages); the fifth stays in the broker
        wait_until("2 running", lambda: read(tmp_path)["running"] == 2, timeout=10, interval=0.05)
        wait_until("2 prefetched", lambda: read(tmp_path)["prefetched"] == 2, timeout=10, interval=0.05)
        load = read_unit(tmp_path)
        assert load is not None and load.running == 2 and load.prefetched == 2 and load.processes == 1
        beat = read(tmp_path)["heartbeat"]
        wait_until("the heartbeat advances while tasks run", lambda: read(tmp_path)["heartbeat"] > beat,
                   timeout=5, interval=0.05)
        release.set()
        broker.join("q")
        worker.join()
        wait_until("idle", lambda: (r := read(tmp_path))["running"] == 0 and r["prefetched"] == 0,
                   timeout=10, interval=0.05)
        assert os.stat(next(tmp_path.glob("*.json"))).st_mode & 0o777 == 0o644
    finally:
        release.set()
        worker.stop()
    assert not list(tmp_path.iterdir()), "the report (and its temporary file) is removed at shutdown"


def test_outside_a_dqagent_unit_it_does_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RUNTIME_DIRECTORY", raising=False)
    assert report_directory() is None
    assert report_directory({"RUNTIME_DIRECTORY": "/run/app:/run/dramatiq-worker/io-3"}) == "/run/dramatiq-worker/io-3"
    broker = StubBroker()
    broker.add_middleware(WorkerReport())
    worker = dramatiq.Worker(broker, worker_threads=1, worker_timeout=50)
    worker.start()
    worker.stop()
    assert not any(t.name == "dqagent-worker-report" for t in threading.enumerate())


def test_a_failing_write_is_logged_once_and_no_message_hook_exists(tmp_path: Path) -> None:
    report = WorkerReport(interval_s=0.05, directory=str(tmp_path / "gone"))
    report._path = str(tmp_path / "gone" / "1.json")  # the directory vanished: writes fail, logged once
    report.write()
    report.write()
    assert report._warned
    # Nothing of it runs per message: it overrides no message hook of Dramatiq's Middleware
    hooks = [h for h in vars(dramatiq.Middleware) if "message" in h or h.endswith("ack")]
    assert hooks and not [h for h in hooks if h in vars(WorkerReport)]


def test_it_imports_without_any_agent_dependency() -> None:
    blocked = ["dbus_fast", "systemd", "redis", "sdnotify", "prometheus_client", "dotenv"]
    code = ("import sys\n"
            "class Block:\n"
            f"    names = {blocked!r}\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name.split('.')[0] in self.names: raise ImportError('blocked: ' + name)\n"
            "sys.meta_path.insert(0, Block())\n"
            "from dqagent.dramatiq import WorkerReport\n"
            "WorkerReport()\n"
            f"assert not [m for m in sys.modules if m.split('.')[0] in {blocked!r}], sorted(sys.modules)\n"
            "assert not [m for m in sys.modules if m.startswith('dqagent.') and m != 'dqagent.dramatiq']\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr

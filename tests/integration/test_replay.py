"""The replay harness (dev/replay) end to end on a tiny trace: real Dramatiq workers under the real agent."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from testbed.agent import REPO
from testbed.nspawn import require_bench

sys.path.insert(0, str(REPO / "dev"))
import replay  # dev/replay.py (dev/ is not a package)


def test_replay_records_every_message_and_the_agents_actions(tmp_path: Path) -> None:
    require_bench()
    saved = tmp_path / "tiny.json"
    # Given a tiny trace (40 messages at once on 0.5/s) compressed x2, on 1..2 workers of 2 threads
    done = subprocess.run([sys.executable, str(REPO / "dev" / "replay.py"), "--traces", "tiny", "--factor", "2",
                           "--threads", "2", "--max-workers", "2", "--dispatch", "poll", "--save", str(saved)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    [run] = [replay.Run(**r) for r in json.loads(saved.read_text())]
    workload = replay.workload_for("tiny", 1, 2)
    # Then every message ran once on a real worker, after its enqueue, for its drawn service time
    assert len(run.times) == len(workload)
    for (enq, start, end), service in zip(run.times, workload.services_s, strict=True):
        assert run.t0 <= enq <= start < end
        assert end - start >= 0.9 * service
    # The agent saw the burst and scaled up (from its journal), and systemd's records give the units' lives
    assert (+1) in [d for _, d in run.scale_events]
    assert len([iv for iv in run.intervals if iv[0] is not None and iv[0] >= run.t0]) >= 1
    # Every unit it started got ready (start job -> "ready for action") or failed by itself (the bench's rare
    # failed start, which the agent retries)
    assert run.failed_starts() or 0 < run.startup_s() < 180  # (seen: 1-50 s on a loaded 2-core host)
    m = run.metrics()
    assert m.worker_seconds > 0 and m.p95_s >= m.p50_s >= 0
    # And the comparison is printed beside the simulator's prediction for the same workload
    assert "tiny    real" in done.stdout and "tiny    sim poll" in done.stdout

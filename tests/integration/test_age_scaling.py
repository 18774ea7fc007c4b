"""MAX_QUEUE_AGE with real Dramatiq workers under the installed agent, and the journal catalog that explains
its scale-up (`journalctl -x`, `journalctl MESSAGE_ID=`), in one container: install, scale, uninstall."""

from __future__ import annotations

import json
import time

from dqagent.report.catalog import BY_EVENT
from testbed.agent import DQAGENT, QUEUE, dqagent, journal, running_workers, worker_names
from testbed.nspawn import Container
from testbed.redis import RedisServer
from testbed.wait import wait_until
from tests.integration.test_reliability import enqueue, install_real, outstanding, ready

CATALOG = "/usr/local/lib/systemd/catalog/dqagent.catalog"
MAX_AGE_S = 5


def test_an_old_message_inside_the_tolerance_band_scales_up_and_the_journal_explains_it(
        fresh_container: Container, redis_server: RedisServer) -> None:
    c = fresh_container
    # Given real workers of one thread (prefetch 2) under `target` with 4 messages per worker +/- 50 %
    # and MAX_QUEUE_AGE=5
    install_real(c, redis_server, threads=1, SCALING_POLICY="target", TARGET_PER_WORKER=4, TARGET_TOLERANCE=0.5,
                 MIN_PROCESSES=1, MAX_PROCESSES=2, MAX_QUEUE_AGE=MAX_AGE_S, DEMAND_POLL_INTERVAL=1,
                 CHECK_INTERVAL=60, PROCESS_STARTUP_DELAY=1, SCALE_DOWN_WINDOW=60)
    assert (c.root / CATALOG.lstrip("/")).read_text().count("\n-- ") == len(BY_EVENT)
    wait_until("worker", lambda: running_workers(c) == worker_names(1))
    # When a 30 s task, then two short ones are enqueued: the worker runs the long one and holds one short
    # one; the other waits in the list. Outstanding 3 for 1 worker at 4: inside the band, no count scale-up
    enqueue(c, redis_server, 1, 30_000)
    enqueue(c, redis_server, 2, 10)
    enqueued = time.monotonic()
    wait_until("one message waits behind the long task", lambda: (ready(redis_server), outstanding(redis_server))
               == (1, 3), timeout=15, interval=0.1)
    report = json.loads(dqagent(c, "status", "--json").stdout)
    age = report["queues"][QUEUE]["oldest_age_s"]
    # Then status shows how long it has waited (the two short ones were enqueued together: the waiting one is
    # one of them)
    assert isinstance(age, float) and 0 <= age <= time.monotonic() - enqueued + 1, report["queues"]
    assert report["max_queue_age_s"] == MAX_AGE_S
    assert "oldest waiting" in dqagent(c, "status").stdout
    wait_until("STATUS= names the age", lambda: ", oldest " in c.unit_property("dqagent.service", "StatusText"),
               timeout=10, interval=0.2)
    # And once it is older than MAX_QUEUE_AGE, a second worker starts, well before the long task ends
    wait_until("2 workers", lambda: running_workers(c) == worker_names(2), timeout=20, interval=0.2)
    scaled_s = time.monotonic() - enqueued
    assert MAX_AGE_S <= scaled_s < 25, scaled_s
    print(f"\nMAX_QUEUE_AGE={MAX_AGE_S}: second worker running {scaled_s:.1f}s after the enqueue")
    (up,) = [r for r in journal(c, "dqagent", "DQAGENT_EVENT=scale_up") if r["TARGET"] == "2"]
    assert f"MAX_QUEUE_AGE {MAX_AGE_S}s: up 1" in up["MESSAGE"], up["MESSAGE"]
    decisions = journal(c, "dqagent", "DQAGENT_EVENT=decision")
    before = [d for d in decisions if int(d["__REALTIME_TIMESTAMP"]) < int(up["__REALTIME_TIMESTAMP"])
              and d["OLDEST_AGE_S"] and d["IN_FLIGHT"] == "2"]
    assert before and all(d["TARGET"] == "1" and "within 50% of target" in d["MESSAGE"] for d in before
                          if float(d["OLDEST_AGE_S"]) <= MAX_AGE_S), before
    assert f"oldest_age_s={before[-1]['OLDEST_AGE_S']}" in before[-1]["BREAKDOWN"]
    assert decisions[0]["OLDEST_AGE_S"] == "" and decisions[0]["BREAKDOWN"].endswith("oldest_age_s=")  # empty
    # And the journal has the event's stable MESSAGE_ID and explains it (journalctl -x, from the catalog)
    mid = BY_EVENT["scale_up"].message_id
    assert up["MESSAGE_ID"] == mid
    found = c.run(["journalctl", f"MESSAGE_ID={mid}", "-o", "json", "--no-pager"]).stdout.splitlines()
    assert any(json.loads(line)["__CURSOR"] == up["__CURSOR"] for line in found)
    explained = c.run(["journalctl", "-x", "-u", "dqagent", f"MESSAGE_ID={mid}", "--no-pager"]).stdout
    assert "Subject: dqagent started Dramatiq workers" in explained, explained
    assert "units: from 1 to 2." in " ".join(explained.replace("░░", " ").split()), explained

    # When dqagent is uninstalled, the catalog goes with it
    out = c.run([DQAGENT, "uninstall"]).stdout
    assert f"removed {CATALOG}" in out and not (c.root / CATALOG.lstrip("/")).exists()
    listed = c.run(["journalctl", "--list-catalog"]).stdout
    assert mid not in listed and " systemd: " in listed  # the index was rebuilt without our entries

"""`dqagent status`'s broker read, in a child process while the parent reads systemd.

Why a process: `dqagent status` is short-lived and spends most of its time importing. redis-py alone takes
60-90 ms to import, as long as reading 100 units from systemd; in one process they add up, and neither is I/O
another thread could overlap (imports hold the GIL). So the parent forks before it imports anything heavy:
the child imports redis-py and reads every pool's queues (one connection, as before), and sends back the
figures as JSON on a pipe; the parent meanwhile imports D-Bus and reads systemd, then takes the figures.
On a host where the fork fails, the read runs in the parent, as before.

The child only reads Redis and writes to its pipe; it never prints, and ends with `os._exit` (nothing of the
parent's is flushed or closed twice). Its answer is the report's keys for the broker: `redis_error` or
`broker_data_rejected` at the top, `queue_length` and `queues` per pool.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import select
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from dqagent.settings.pools import Pool, probe_settings
from dqagent.settings.sources import Loaded

#: Seconds the parent waits for the child beyond three Redis timeouts (the probe's reads are bounded by them).
SLACK_S = 5.0


async def read(loaded: Loaded, pools: Sequence[Pool]) -> dict[str, Any]:
    """Every pool's queues (one read, one connection): {"report": {...}, "pools": {name: {...}}}."""
    from dqagent.broker.probes import open_probe
    from dqagent.core.demand import Demand
    from dqagent.errors import DqAgentError

    top: dict[str, Any] = {}
    parts: dict[str, dict[str, Any]] = {p.name: {} for p in pools}
    probe = open_probe(probe_settings(loaded.settings, pools), pools)  # host-wide broker settings: one probe
    try:
        demand = await probe.fetch_demand()
    except DqAgentError as exc:
        top["redis_error"] = str(exc) + (f"; {loaded.password_note}" if loaded.password_note else "")
    except Exception as exc:  # data no check caught, or a bug: a line in the report, never a traceback
        top["redis_error"] = f"unexpected {type(exc).__name__} reading the broker: {' '.join(str(exc).split())[:200]}"
    else:
        top["broker_data_rejected"] = [{"kind": r.kind.value, "key": r.key, "reason": r.reason}
                                       for r in demand.rejected]
        by_queue = {q.queue: q for q in demand.queues}
        for pool in pools:
            mine = Demand(tuple(by_queue[name] for name in pool.settings.queue_names))
            parts[pool.name]["queue_length"] = mine.queue_length(pool.settings.queue_metric)
            parts[pool.name]["queues"] = {
                q.queue: {"ready": q.ready, "in_flight": q.in_flight, "delayed": q.delayed, "dead_lettered": q.dead,
                          "orphaned": q.orphaned, "oldest_age_s": q.oldest_age_s,
                          **({"consumers": q.consumers, "in_flight_known": q.in_flight_known}
                             if q.consumers is not None else {})} for q in mine.queues}
    finally:
        await probe.close()
    return {"report": top, "pools": parts}


@dataclass
class Pending:
    """The broker read under way: in a child process (`pid` > 0), or still to run in this one (`pid` 0)."""

    loaded: Loaded
    pools: Sequence[Pool]
    pid: int = 0
    fd: int = -1

    @classmethod
    def start(cls, loaded: Loaded, pools: Sequence[Pool]) -> Pending:
        """Fork the child that reads the broker (call before any event loop runs, and before heavy imports)."""
        pending = cls(loaded, pools)
        try:
            rfd, wfd = os.pipe()
        except OSError:  # out of descriptors: read in this process later
            return pending
        try:
            pid = os.fork()
        except OSError:  # no fork here (a limit, a sandbox): read in this process later
            os.close(rfd)
            os.close(wfd)
            return pending
        if pid == 0:  # the child: read, answer, end
            os.close(rfd)
            code = 0
            try:
                answer = json.dumps(asyncio.run(read(loaded, pools))).encode()
                while answer:
                    answer = answer[os.write(wfd, answer):]
            except BaseException:  # the parent reports a read that gave no answer
                code = 1
            finally:
                os._exit(code)
        os.close(wfd)
        pending.pid, pending.fd = pid, rfd
        return pending

    async def result(self) -> dict[str, Any]:
        """The child's answer (or this process's own read when there is no child)."""
        if self.pid == 0:
            return await read(self.loaded, self.pools)
        deadline = time.monotonic() + 3 * self.loaded.settings.broker_timeout_s() + SLACK_S
        chunks: list[bytes] = []
        try:
            while (left := deadline - time.monotonic()) > 0:
                ready, _, _ = await asyncio.to_thread(select.select, [self.fd], [], [], left)
                if not ready:
                    break
                chunk = os.read(self.fd, 65536)
                if not chunk:
                    return dict(json.loads(b"".join(chunks)))
                chunks.append(chunk)
            raise TimeoutError
        except (TimeoutError, ValueError):
            return {"report": {"redis_error": "the broker read gave no answer (see journalctl for redis-server)"},
                    "pools": {}}
        finally:
            os.close(self.fd)
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, 9)  # gone already unless it hangs past its deadline
            with contextlib.suppress(ChildProcessError):
                os.waitpid(self.pid, 0)

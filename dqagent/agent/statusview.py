"""The agent's status page data: its latest snapshot as a `StatusView`, for the one document builder.

Called from the metrics server's thread for each page or `/status.json` request: it only reads the snapshot
(immutable, replaced whole by the loop) and the settings and pools as they are (replaced whole by a reload),
so it never waits for the loop nor makes it wait. Nothing here reads Redis, D-Bus or the journal: a failing
worker's last line is not on the page (`dqagent status` reads it), and workers are as the last check listed
them.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

from dqagent.core.snapshot import Snapshot
from dqagent.host.pressure import limits
from dqagent.report.page import PageData
from dqagent.report.statusdoc import GuardReading, PoolView, StatusView, document
from dqagent.settings.config import Settings
from dqagent.settings.parsers import DEFAULT_POOL
from dqagent.settings.pools import Pool

#: Keys of the document the agent's HTTP server does not serve (None instead): where its settings and Redis
#: are, and the worker command's error (which quotes the command). The page exposes no settings values
#: beyond the figures the metrics carry (bounds, policy, queues), so these stay with `dqagent status`.
WITHHELD = ("redis", "broker_location", "settings_file", "command_error")


def view_of(snap: Snapshot, settings: Settings, pools: Sequence[Pool]) -> StatusView:
    """The snapshot as the document builder's input (the agent is running: its state is `active`)."""
    declared = pools or (Pool(DEFAULT_POOL, settings),)
    figures = {p.name: p for p in snap.pools}
    views = []
    for pool in declared:
        f = figures.get(pool.name)
        views.append(PoolView(pool, queues=f.queues if f is not None and snap.redis_up else None,
                              units=f.units if f is not None and f.workers is not None else None,
                              pause=f.pause if f is not None else None, forecast=f.forecast if f is not None else None))
    guard = None
    if settings.guard and snap.headroom is not None:
        guard = GuardReading(snap.headroom, limits(settings, snap.headroom.mem_total))
    return StatusView(settings, None, tuple(views), snap.taken_at_s,
                      redis_error=None if snap.redis_up else (snap.broker_error or "the broker could not be read"),
                      rejected=snap.rejected, agent_state="active", agent_status_text=snap.status_text or None,
                      guard=guard, cpu_count=os.cpu_count())


def public_document(snap: Snapshot, settings: Settings, pools: Sequence[Pool]) -> dict[str, Any]:
    """`/status.json`: the document `dqagent status --json` would show, less `WITHHELD`."""
    doc = document(view_of(snap, settings, pools))
    for part in (doc, *doc["pools"].values()):
        for key in WITHHELD:
            if key in part:
                part[key] = None
    return doc


def page_source(latest: Callable[[], Snapshot | None], settings: Callable[[], Settings],
                pools: Callable[[], Sequence[Pool]]) -> Callable[[], PageData | None]:
    """What the status page reads on each request: the public document, each pool's history and the last
    decisions, all from one snapshot (None before the first check). Built once per snapshot (and settings,
    pools): the same `PageData` object until one of them is replaced, so `pageapp` renders it once."""
    made: list[tuple[tuple[object, object, object], PageData]] = []  # the last one made, and from what

    def read() -> PageData | None:
        snap, s, ps = latest(), settings(), pools()
        if snap is None:
            return None
        if made and made[0][0][0] is snap and made[0][0][1:] == (s, ps):
            return made[0][1]  # the same snapshot (replaced whole, never changed) and settings: the same page
        data = PageData(public_document(snap, s, ps), {p.name: p.history for p in snap.pools}, snap.decisions,
                        snap.taken_at_s)
        made[:] = [((snap, s, ps), data)]
        return data
    return read

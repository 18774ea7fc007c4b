"""`python -m dqagent.sim.daily`'s pause rows show what the agent does (docs/scaling.md, "Schedules and pauses on
a daily workload"): during a pause before the rush nothing starts or stops and the rush waits; during maintenance
at 0 no worker runs, nothing is lost, and the backlog is served right after it. The day up to 15:00 only (the
rows' pauses are over by then), both pauses in one run."""

from __future__ import annotations

from dataclasses import replace

from dqagent.sim.daily import MIDNIGHT_S, PAUSE_ROWS, RUSH_S, H, day_trace, row, sim_s, simulate_day
from dqagent.sim.model import Life
from dqagent.sim.traces import generate

FREEZE, MAINTENANCE = PAUSE_ROWS[0][2], PAUSE_ROWS[1][2]


def alive(lives: tuple[Life, ...], t: float) -> int:
    return sum(1 for life in lives if life.started_s <= t and not life.ended_s <= t)


def test_the_daily_pause_rows_freeze_the_rush_and_drain_the_afternoon() -> None:
    assert FREEZE.at is None and MAINTENANCE.at == 0 and FREEZE.until_s and MAINTENANCE.until_s
    workload = generate(replace(day_trace(), duration_s=MIDNIGHT_S + 15 * H, bursts=()), 1)
    base = simulate_day(workload, "")
    paused = simulate_day(workload, "", (FREEZE, MAINTENANCE))  # (asserts that every message started)
    assert set(paused.completed) == {1}  # nothing lost, nothing run twice
    freeze_row, maintenance_row = (row("p", "", workload, paused, p) for p in (FREEZE, MAINTENANCE))
    plain = row("base", "", workload, base)

    # The pause (07:50-08:20): no start, no stop, the same workers throughout; the rush waits minutes, not seconds
    since, until = sim_s(FREEZE.since_s), sim_s(FREEZE.until_s)
    assert not [life for life in paused.lives if since <= life.started_s < until or since <= life.stopped_s < until]
    assert alive(paused.lives, since) == alive(paused.lives, until - 1) == 1
    assert since < RUSH_S[0] < RUSH_S[1] < until
    assert plain.rush_max_s < 60 and freeze_row.rush_max_s > 10 * 60 and freeze_row.rush_p95_s > 10 * 60
    assert freeze_row.waiting_at_end > 5000  # the rush's backlog, served once the pause ends
    assert any(until <= life.started_s < until + 10 for life in paused.lives)
    assert freeze_row.served_s < 10 * 60

    # Maintenance at 0 (14:00-14:30): every worker stops gracefully, none runs, messages wait and start after it
    since, until = sim_s(MAINTENANCE.since_s), sim_s(MAINTENANCE.until_s)
    assert alive(paused.lives, since - 1) >= 1
    assert all(life.ended_s <= since + 60 or life.started_s >= until for life in paused.lives)
    assert alive(paused.lives, since + 60) == alive(paused.lives, until - 1) == 0
    arrived = [(a, w) for a, w in zip(workload.arrivals_s, paused.waits_s, strict=True) if since + 60 <= a < until]
    assert len(arrived) > 3000 and all(a + w >= until for a, w in arrived)
    assert maintenance_row.waiting_at_end > 3000 and maintenance_row.pause_max_s >= until - since - 60
    assert maintenance_row.served_s < 5 * 60  # the backlog is served within minutes of the end

    # What the pauses cost: fewer worker-hours, longer waits
    assert paused.worker_seconds < base.worker_seconds
    assert max(paused.waits_s) > 25 * 60 > max(base.waits_s)

"""The simulator's model of which worker is busy: a stopped worker's tasks are cut at its shutdown timeout and run
again; with the workers' reports the agent's step stops the least busy first, which cuts fewer tasks short."""

from __future__ import annotations

from dataclasses import replace

from dqagent.sim.bench import contenders, run
from dqagent.sim.busybench import JOBS, LONG_POOL, markdown, rows
from dqagent.sim.traces import generate


def test_least_busy_first_cuts_fewer_long_jobs_short_than_the_highest_number() -> None:
    workload = generate(JOBS, 1)
    step = contenders()["step"]
    old = run(step, workload, LONG_POOL)
    new = run(step, workload, replace(LONG_POOL, reports=True))
    assert old.reruns > new.reruns
    assert sum(old.completed) == sum(new.completed) == len(workload)  # every job done once at the end
    # Without a shutdown timeout a stopped worker drains fully: nothing runs twice
    assert run(step, workload, replace(LONG_POOL, shutdown_timeout_s=None)).reruns == 0


def test_the_table_has_both_orders_of_every_workload_from_the_same_runs() -> None:
    table = rows(("step",))
    assert {(r.workload, r.order) for r in table} >= {("jobs of minutes", "highest number"),
                                                      ("jobs of minutes", "least busy")}
    assert len(table) == 2 * len({r.workload for r in table})
    assert "| jobs of minutes | step | least busy |" in markdown(table)

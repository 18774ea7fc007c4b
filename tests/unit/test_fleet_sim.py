"""The multi-host simulator (dqagent.sim.fleet): its checks hold on a short randomized run, and it tells
the fleet from independent agents."""

from __future__ import annotations

from dqagent.sim.fleet import Summary, compare, run_once


def test_a_short_randomized_run_keeps_every_property_and_uses_fewer_workers_than_independent_agents() -> None:
    fleet, alone = compare(runs=1, hours=0.25, seed=3)
    assert fleet.violations == []
    assert fleet.converge_checks > 0 and fleet.converged == fleet.converge_checks
    assert fleet.worker_seconds < alone.worker_seconds
    assert "over-provisioning" in fleet.line() and "independent agents" in alone.line()


def test_the_same_scenario_costs_independent_agents_more() -> None:
    fleet, alone = Summary("fleet"), Summary("independent agents")
    run_once(5, 0.25, True, fleet)
    run_once(5, 0.25, False, alone)
    assert fleet.need_seconds == alone.need_seconds  # the same demand and membership
    assert alone.worker_seconds > fleet.worker_seconds and alone.over_seconds > fleet.over_seconds

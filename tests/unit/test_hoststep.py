"""The host step (dqagent.core.hoststep.decide_host): one pool without a budget is exactly `decide`; with pools the
budget caps each pool, the higher priority starts first, and the guard counts earlier pools' starts as starting."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from hypothesis import given
from hypothesis import strategies as st

from dqagent.core.demand import Demand, QueueDemand
from dqagent.core.guard import Headroom, Limits
from dqagent.core.hoststep import PoolInput, decide_host
from dqagent.core.policies import Decision, Observation
from dqagent.core.reconciler import Backoff
from dqagent.core.step import Check, Host, Memory, NeedsHost, Observed, Rules, decide
from dqagent.core.units import ActiveState, UnitState, worker_unit
from dqagent.settings.config import QueueMetric
from tests.unit.test_step import Case, cases

NOW_US = 1_000_000_000_000.0
GIB = 2**30


@given(cases())
def test_one_pool_without_a_budget_is_exactly_its_step(case: Case) -> None:
    pool = PoolInput("default", case.rules, case.observed, case.memory)
    first = decide_host([pool], None)
    alone = decide(case.rules, case.observed, case.memory)
    if isinstance(alone, NeedsHost):
        assert first == alone
        assert decide_host([pool], None, case.host) == {"default": decide(case.rules, case.observed, case.memory,
                                                                           host=case.host)}
    else:
        assert first == {"default": alone}


@given(cases(), cases(), st.integers(0, 30), st.sampled_from([0, 5]))
def test_with_a_budget_no_pool_grows_past_its_cap_and_the_units_stay_within_the_budget(
        a: Case, b: Case, budget: int, low: int) -> None:
    """Each pool's target is at most its cap (or its MIN); when every pool is within [MIN, MAX] the units after the
    check (every pool's counted units and starts, and the stopping ones) fit the budget or stay what they were."""
    pools = [PoolInput("a", a.rules, a.observed, a.memory, priority=5),
             PoolInput("b", b.rules, b.observed, b.memory, priority=low)]
    budget = max(budget, a.rules.min_processes + b.rules.min_processes)
    got = decide_host(pools, budget, a.host)
    assert isinstance(got, dict) and list(got) == ["a", "b"]
    before = after = 0
    within = True
    for p in pools:
        check = got[p.name]
        assert check.budget is not None
        assert check.plan.wanted <= max(check.budget.cap, p.rules.min_processes)
        census = check.seen.census
        before += census.pool + census.going
        after += census.pool + len(check.plan.start) + census.going
        within &= p.rules.min_processes <= census.pool <= p.rules.max_processes
    if within:
        assert after <= max(budget, before)


@dataclass(frozen=True, slots=True)
class Wants:
    """A policy that wants a fixed number of workers."""

    target: int
    name: ClassVar[str] = "wants"

    def initial_state(self) -> None:
        return None

    def decide(self, obs: Observation, state: None) -> tuple[Decision, None]:
        return Decision(self.target, f"wants {self.target}"), None


def pool(name: str, priority: int, running: int, wants: int, guard: bool = False) -> PoolInput:
    """A pool of `running` settled units, range [1, 8], whose policy wants `wants`."""
    rules = Rules(Wants(wants), 1, 8, QueueMetric("outstanding"), adaptive_reads=False, read_every_s=5.0,
                  check_interval_s=180.0, startup_delay_s=5.0, guard=guard, queue_names=(name,))
    units = tuple(UnitState(worker_unit(n, name), n, ActiveState.ACTIVE, "running", 100 + n, 1, 0, "success", False,
                            pool=name) for n in range(1, running + 1))
    demand = Demand((QueueDemand(name, 50, 50, 0, 0, 0, None),))
    return PoolInput(name, rules, Observed(100.0, NOW_US, demand, units, {}, Backoff()), Memory(None), priority)


def test_with_a_budget_of_5_the_higher_priority_pool_takes_the_free_room_first() -> None:
    got = decide_host([pool("batch", 0, 1, 6), pool("urgent", 10, 1, 6)], 5)
    assert isinstance(got, dict) and list(got) == ["urgent", "batch"]  # decided (and started) in priority order
    urgent, batch = got["urgent"], got["batch"]
    assert len(urgent.plan.start) == 3 and batch.plan.start == ()  # all the free room to urgent, batch at its MIN
    assert urgent.budget is not None and (urgent.budget.share, urgent.budget.cap) == (4, 4)
    assert batch.budget is not None and batch.budget.short and batch.budget.gave_way_to == ("urgent",)
    assert "host budget" in batch.decision.reason and batch.label == "host_budget"


def test_a_higher_priority_burst_stops_the_lower_pool_and_grows_only_as_room_frees() -> None:
    got = decide_host([pool("batch", 0, 4, 6), pool("urgent", 10, 1, 6)], 5)
    assert isinstance(got, dict)
    assert len(got["batch"].plan.stop) == 3 and got["urgent"].plan.start == ()  # nothing free until batch stops


def test_the_guard_counts_the_starts_of_pools_before_it_as_starting() -> None:
    """Memory for 4 more workers: urgent starts 3 of them, so batch may start only 1, not 3 again."""
    pools = [pool("batch", 0, 1, 4, guard=True), pool("urgent", 10, 1, 4, guard=True)]
    assert isinstance(decide_host(pools, None), NeedsHost)
    host = Host(Headroom(mem_available=5 * GIB, mem_total=16 * GIB, worker_bytes=GIB), Limits(90, 90, GIB))
    got = decide_host(pools, None, host)
    assert isinstance(got, dict)
    assert len(got["urgent"].plan.start) == 3 and len(got["batch"].plan.start) == 1
    assert got["batch"].verdict.holding and "3 still starting" in got["batch"].verdict.reason
    alone = decide(pools[0].rules, pools[0].observed, pools[0].memory, host=host)
    assert isinstance(alone, Check) and len(alone.plan.start) == 3  # alone, batch would have taken them


def test_pools_of_equal_priority_are_decided_by_name() -> None:
    got = decide_host([pool("b", 0, 1, 2), pool("a", 0, 1, 2)], 3)
    assert isinstance(got, dict) and list(got) == ["a", "b"]
    assert len(got["a"].plan.start) == 1 and got["b"].plan.start == ()
    assert got["a"].budget is not None and got["b"].budget is not None
    assert (got["a"].budget.share, got["b"].budget.share) == (2, 1)  # the remainder of a tie by name

"""The host budget (dqagent.core.budget): HOST_MAX_PROCESSES shared between pools, as properties: the sum, the
bounds, the priority order, the even split within a priority, monotonicity, and the per-check cap."""

from __future__ import annotations

from dataclasses import replace

from hypothesis import given
from hypothesis import strategies as st

from dqagent.core.budget import Claim, apportion, shares

NAMES = ("a", "b", "c", "d", "e")


@st.composite
def claims(draw: st.DrawFn) -> list[Claim]:
    """2..5 pools: priorities from a small set (so ties happen), any wanted (below MIN, above MAX)."""
    out = []
    for name in NAMES[:draw(st.integers(1, len(NAMES)))]:
        lo = draw(st.integers(0, 4))
        hi = draw(st.integers(max(lo, 1), 12))
        out.append(Claim(name, draw(st.sampled_from([0, 0, 5, 50])), lo, hi, draw(st.integers(0, 16)),
                         current=draw(st.integers(0, 14)), going=draw(st.integers(0, 3))))
    return out


@st.composite
def fitting(draw: st.DrawFn) -> tuple[int, list[Claim]]:
    """Claims and a budget that the MINs fit in (the settings refuse any other: HOST_MAX_PROCESSES >= MINs)."""
    cs = draw(claims())
    return draw(st.integers(sum(c.min_processes for c in cs), sum(c.max_processes for c in cs) + 2)), cs


@given(fitting())
def test_the_shares_sum_to_the_budget_or_every_claim_and_stay_within_min_and_the_claim(case: tuple[int, list[Claim]]
                                                                                       ) -> None:
    budget, cs = case
    got = shares(budget, cs)
    assert sum(got.values()) == min(budget, sum(c.claim for c in cs))
    for c in cs:
        assert c.min_processes <= got[c.pool] <= c.claim


@given(fitting())
def test_a_pool_left_short_means_every_lower_priority_pool_is_at_its_min(case: tuple[int, list[Claim]]) -> None:
    budget, cs = case
    got = shares(budget, cs)
    for c in cs:
        if got[c.pool] < c.claim:
            assert all(got[o.pool] == o.min_processes for o in cs if o.priority < c.priority)


@given(fitting())
def test_equal_priorities_share_their_room_evenly_unless_a_claim_is_reached(case: tuple[int, list[Claim]]) -> None:
    """Within one priority the room above the MINs is split one worker at a time: a pool left short has at most
    one worker of room less than any other pool of its priority (which may stop short of that at its claim)."""
    budget, cs = case
    got = shares(budget, cs)
    room = {c.pool: got[c.pool] - c.min_processes for c in cs}
    for c in cs:
        if got[c.pool] < c.claim:
            assert all(room[o.pool] <= room[c.pool] + 1 for o in cs if o.priority == c.priority)


@given(fitting(), st.data())
def test_lowering_one_pools_wanted_never_lowers_another_pools_share(case: tuple[int, list[Claim]],
                                                                    data: st.DataObject) -> None:
    budget, cs = case
    i = data.draw(st.integers(0, len(cs) - 1))
    lowered = list(cs)
    lowered[i] = replace(cs[i], wanted=data.draw(st.integers(0, cs[i].wanted)))
    before, after = shares(budget, cs), shares(budget, lowered)
    for j, c in enumerate(cs):
        if j != i:
            assert after[c.pool] >= before[c.pool]


@given(fitting(), st.data())
def test_raising_a_pools_own_wanted_never_lowers_its_share(case: tuple[int, list[Claim]], data: st.DataObject
                                                            ) -> None:
    budget, cs = case
    i = data.draw(st.integers(0, len(cs) - 1))
    raised = list(cs)
    raised[i] = replace(cs[i], wanted=cs[i].wanted + data.draw(st.integers(0, 10)))
    assert shares(budget, raised)[cs[i].pool] >= shares(budget, cs)[cs[i].pool]


@given(claims())
def test_no_budget_gives_every_claim(cs: list[Claim]) -> None:
    assert shares(None, cs) == {c.pool: c.claim for c in cs}
    for c in cs:
        allotted = apportion(None, cs)[c.pool]
        assert allotted.share == c.claim and not allotted.short


@given(fitting())
def test_after_a_check_the_units_never_exceed_the_budget_unless_they_already_did(case: tuple[int, list[Claim]]
                                                                                  ) -> None:
    """A pool grows at most to its cap and a pool above its cap keeps its units until their stops end: the
    units counted after the check (each pool's larger of cap and now, plus the stopping ones) fit the budget,
    or at worst stay what they were plus the pools brought up to their MIN (never held back)."""
    budget, cs = case
    got = apportion(budget, cs)
    after = sum(max(got[c.pool].cap, c.current) + c.going for c in cs)
    assert after <= max(budget, sum(max(c.current, c.min_processes) + c.going for c in cs))
    for c in cs:
        a = got[c.pool]
        assert c.min_processes <= a.cap <= a.share == shares(budget, cs)[c.pool]
        assert a.cap >= min(a.share, c.current)  # a pool never shrinks below its share for room's sake


@given(fitting())
def test_a_pool_below_its_claim_names_the_pools_that_took_its_room(case: tuple[int, list[Claim]]) -> None:
    budget, cs = case
    got = apportion(budget, cs)
    for c in cs:
        a = got[c.pool]
        assert a.short == (a.share < c.claim)
        assert c.pool not in a.gave_way_to
        assert all(o.priority >= c.priority for o in cs if o.pool in a.gave_way_to)


@given(fitting())
def test_the_free_room_goes_to_the_higher_priority_pool_first(case: tuple[int, list[Claim]]) -> None:
    """While room is scarce, a pool grows this check only when every higher-priority pool has grown to its share."""
    budget, cs = case
    got = apportion(budget, cs)
    for c in cs:
        if got[c.pool].cap > max(c.current, c.min_processes):  # growth to MIN is never held back
            for o in cs:
                if o.priority > c.priority:
                    assert got[o.pool].cap == got[o.pool].share


def test_a_worked_example_two_pools_bursting_on_a_budget_of_5() -> None:
    high = Claim("urgent", 50, 1, 5, wanted=5, current=1)
    low = Claim("batch", 0, 1, 5, wanted=5, current=4)
    got = apportion(5, [high, low])
    # high takes all but low's MIN; low shrinks at once (graceful stops), high grows only into free room
    assert (got["urgent"].share, got["batch"].share) == (4, 1)
    assert (got["urgent"].cap, got["batch"].cap) == (1, 1)
    assert got["batch"].gave_way_to == ("urgent",)
    # the next check: batch's 3 still stopping hold their room; once gone, urgent grows to its share
    assert apportion(5, [replace(high, current=1), replace(low, current=1, going=3)])["urgent"].cap == 1
    assert apportion(5, [replace(high, current=1), replace(low, current=1, going=1)])["urgent"].cap == 3
    assert apportion(5, [replace(high, current=1), replace(low, current=1)])["urgent"].cap == 4


def test_a_tie_of_priority_splits_the_room_evenly_and_the_remainder_by_name() -> None:
    cs = [Claim("b", 0, 1, 9, 9), Claim("a", 0, 1, 9, 9), Claim("c", 0, 0, 9, 0)]
    assert shares(6, cs) == {"a": 3, "b": 3, "c": 0}
    assert shares(7, cs) == {"a": 4, "b": 3, "c": 0}


def test_a_pool_whose_claim_is_its_min_takes_none_of_its_prioritys_room() -> None:
    cs = [Claim("a", 0, 2, 9, 0), Claim("b", 0, 1, 9, 9), Claim("c", 0, 1, 9, 9)]
    assert shares(7, cs) == {"a": 2, "b": 3, "c": 2}

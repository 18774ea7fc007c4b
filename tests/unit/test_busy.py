"""Which worker is busy (dqagent.core.busy) and how the reconciler uses it: least busy first, never a running
worker while an idle one can go, exactly the old order without reports; hung workers restarted, never busy ones."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from dqagent.core import busy
from dqagent.core.busy import Load, Rank, Sighting, parse_report
from dqagent.core.reconciler import Backoff, Intent, census, classify, reconcile
from dqagent.core.units import ActiveState, UnitState

IDLE = Load(0, 0, 1, 5, 100.0)


def unit(n: int, entered: int = 1) -> UnitState:
    return UnitState(f"dramatiq-worker@{n}.service", n, ActiveState.ACTIVE, "running", 0, entered, 0, "success",
                     has_job=False)


def load(running: int, prefetched: int = 0) -> Load:
    return Load(running, prefetched, 1, 0, 100.0)


loads_st = st.one_of(st.none(), st.builds(load, st.integers(0, 4), st.integers(0, 8)))


@settings(max_examples=300)
@given(st.dictionaries(st.integers(1, 12), loads_st, min_size=1), st.integers(0, 12))
def test_a_running_worker_is_never_stopped_while_an_idle_one_stays(drawn: dict[int, Load | None], wanted: int) -> None:
    states = [unit(n) for n in sorted(drawn)]
    loads = {n: v for n, v in drawn.items() if v is not None}
    plan = reconcile(states, wanted, min_processes=0, max_processes=20, in_flight={}, backoff=Backoff(), now_s=0,
                     loads=loads)
    assert len(plan.stop) == max(0, len(states) - wanted)
    kept = set(drawn) - set(plan.stop)
    idle_kept = [n for n in kept if n in loads and loads[n].idle]
    for n in plan.stop:
        if n in loads and loads[n].running:
            assert not idle_kept, (plan.stop, loads)
    # cheaper stops come first: the ranks of the chosen never exceed those kept
    if plan.stop and kept:
        assert max(busy.rank_of(n, loads, ()) for n in plan.stop) <= min(busy.rank_of(n, loads, ()) for n in kept)


@given(st.sets(st.integers(1, 30), min_size=1), st.integers(0, 30))
def test_without_reports_the_highest_numbers_stop_as_before(numbers: set[int], wanted: int) -> None:
    plan = reconcile([unit(n) for n in numbers], wanted, min_processes=0, max_processes=40, in_flight={},
                     backoff=Backoff(), now_s=0)
    assert list(plan.stop) == sorted(numbers, reverse=True)[:max(0, len(numbers) - wanted)]
    assert plan.stop_note == "" and not plan.all_busy


def test_the_decision_names_the_units_and_says_when_every_candidate_is_busy() -> None:
    states = [unit(n) for n in (1, 2, 3, 4)]
    loads = {1: load(2), 2: load(1), 3: load(2, 4), 4: load(2)}
    plan = reconcile(states, 3, min_processes=0, max_processes=8, in_flight={}, backoff=Backoff(), now_s=0,
                     loads=loads)
    assert plan.stop == (2,)  # fewest running frees capacity soonest
    assert plan.all_busy and plan.stop_note == "stops @2 (1 running, 0 prefetched); every candidate busy"
    idle = reconcile(states, 3, min_processes=0, max_processes=8, in_flight={}, backoff=Backoff(), now_s=0,
                     loads={**loads, 1: IDLE})
    assert idle.stop == (1,) and idle.stop_note == "stops @1 (idle)" and not idle.all_busy


def test_hung_workers_are_restarted_or_stopped_first_and_count_as_coming() -> None:
    states = [unit(n) for n in (1, 2, 3)]
    plan = reconcile(states, 3, min_processes=0, max_processes=8, in_flight={}, backoff=Backoff(), now_s=0,
                     loads={1: IDLE, 2: load(1), 3: IDLE}, hung={2})
    assert plan.restart == (2,) and plan.stop == () and plan.start == ()
    down = reconcile(states, 2, min_processes=0, max_processes=8, in_flight={}, backoff=Backoff(), now_s=0,
                     loads={1: IDLE, 2: load(1), 3: IDLE}, hung={2})
    assert down.stop == (2,) and down.restart == ()
    held = reconcile(states, 3, min_processes=0, max_processes=8, in_flight={}, backoff=Backoff(1, 50.0), now_s=0,
                     hung={2})
    assert held.restart == ()
    # while restarting, the unit is capacity on its way back: nothing else starts
    assert classify(states[1], Intent.RESTART).value == "coming"
    assert census(states[:1], {2: Intent.RESTART}).pool == 2


def test_a_heartbeat_that_stops_advancing_is_hung_after_the_setting_a_beating_one_never() -> None:
    seen: dict[int, Sighting] = {}
    for t in range(0, 30):
        beating = Load(2, 0, 1, 0, 1000.0 + t)  # busy all along, heartbeat advancing
        frozen = Load(1, 0, 1, 0, 1000.0 + min(t, 5))  # its heartbeat stops at t=5
        reports = {1: beating, 2: frozen} if t < 20 else {1: beating}  # and then its report vanishes
        seen = busy.sight(seen, {1: 7, 2: 7}, reports, float(t))
        hung = busy.hung(seen, {1, 2}, float(t), 10.0)
        assert 1 not in hung
        assert (2 in hung) == (t >= 15), t
    assert busy.hung(seen, {1, 2}, 29.0, None) == frozenset()
    # a new activation (the restart) starts afresh
    assert busy.hung(busy.sight(seen, {2: 8}, {}, 30.0), {2}, 30.0, 10.0) == frozenset()


def test_a_report_is_untrusted_input() -> None:
    good = {"pid": 12, "running": 1, "prefetched": 2, "done": 3, "heartbeat": 1733530000.5, "threads": 8}
    assert parse_report(json.dumps(good).encode()) == busy.ProcessReport(12, 1, 2, 3, 1733530000.5)
    for bad in (b"", b"{", b"[]", b"x" * 5000, json.dumps({**good, "running": -1}).encode(),
                json.dumps({**good, "heartbeat": True}).encode(), json.dumps({**good, "pid": "1e3"}).encode(),
                json.dumps({**good, "prefetched": 10**9}).encode(), b"[" * 100000):
        assert parse_report(bad) is None, bad[:40]
    two = busy.combine([busy.ProcessReport(1, 1, 0, 2, 10.0), busy.ProcessReport(2, 0, 3, 1, 9.0)])
    assert two == Load(1, 3, 2, 3, 9.0) and two.rank is Rank.RUNNING


def test_a_busy_worker_is_not_stopped_while_our_starts_may_settle_idle() -> None:
    # @1..@3 are still in their start check (ours in flight), @4 runs two tasks: the scale-down to 1 waits
    states = [unit(n) for n in (1, 2, 3, 4)]
    flight = {1: Intent.START, 2: Intent.START, 3: Intent.START}
    plan = reconcile(states, 1, min_processes=1, max_processes=8, in_flight=flight, backoff=Backoff(), now_s=0,
                     loads={4: load(2)})
    assert plan.stop == ()
    # once they are settled (and idle, or not reported yet), they go first
    settled_plan = reconcile(states, 1, min_processes=1, max_processes=8, in_flight={}, backoff=Backoff(), now_s=0,
                             loads={4: load(2)})
    assert settled_plan.stop == (3, 2, 1)
    # without reports the old order holds whatever is in flight
    assert reconcile([*states[3:], unit(5)], 1, min_processes=1, max_processes=8, in_flight=flight,
                     backoff=Backoff(), now_s=0).stop == (5, 4)

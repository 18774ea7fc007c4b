"""Properties of the guard (pure): never above the policy, never below the pool, scale-down never held,
monotone in headroom; and its reasons and STATUS= text."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from dqagent.core.guard import Headroom, Limits, Verdict, decide, resolve_bytes, worker_size

GiB = 1024**3
pressure = st.one_of(st.none(), st.floats(0, 100))
size = st.one_of(st.none(), st.integers(0, 64 * GiB))
counts = st.integers(0, 200)


@st.composite
def headrooms(draw: st.DrawFn) -> Headroom:
    return Headroom(cpu_some=draw(pressure), memory_some=draw(pressure), memory_full=draw(pressure),
                    mem_available=draw(size), mem_total=64 * GiB, worker_bytes=draw(size))


@st.composite
def limits(draw: st.DrawFn) -> Limits:
    return Limits(cpu_pressure=draw(st.floats(0.1, 100)), memory_pressure=draw(st.floats(0.1, 100)),
                  memory_reserve=draw(st.integers(0, 8 * GiB)))


@st.composite
def more_headroom(draw: st.DrawFn, h: Headroom) -> Headroom:
    """`h` with every figure the same or better: pressures lower (or unknown), more memory, smaller workers."""
    def lower(x: float | None) -> float | None:
        return None if x is None or draw(st.booleans()) else draw(st.floats(0, x))

    def more(x: int | None) -> int | None:
        return None if x is None or draw(st.booleans()) else x + draw(st.integers(0, 8 * GiB))

    def smaller(x: int | None) -> int | None:
        return None if x is None or draw(st.booleans()) else draw(st.integers(0, x))

    return Headroom(cpu_some=lower(h.cpu_some), memory_some=lower(h.memory_some), memory_full=lower(h.memory_full),
                    mem_available=more(h.mem_available), mem_total=h.mem_total, worker_bytes=smaller(h.worker_bytes))


@given(counts, counts, st.integers(0, 20), headrooms(), limits())
def test_never_above_the_policy_never_below_the_pool(pool: int, wanted: int, floor: int, h: Headroom,
                                                      lim: Limits) -> None:
    v = decide(pool, wanted, floor, h, lim)
    assert v.target <= wanted and v.wanted == wanted
    assert v.target >= min(wanted, max(pool, floor))
    assert v.holding == (v.target < wanted) == bool(v.resource)


@given(counts, counts, st.integers(0, 20), headrooms(), limits())
def test_scale_down_and_no_change_are_never_held(pool: int, wanted: int, floor: int, h: Headroom,
                                                 lim: Limits) -> None:
    if wanted <= pool:
        assert decide(pool, wanted, floor, h, lim) == Verdict(wanted, wanted)


@given(counts, counts, st.integers(0, 20), headrooms().flatmap(lambda h: st.tuples(st.just(h), more_headroom(h))),
       limits())
def test_monotone_in_headroom(pool: int, wanted: int, floor: int, pair: tuple[Headroom, Headroom],
                              lim: Limits) -> None:
    worse, better = pair
    assert decide(pool, wanted, floor, better, lim).target >= decide(pool, wanted, floor, worse, lim).target


@given(counts, counts, headrooms(), limits(), st.floats(0, 50), st.integers(0, GiB))
def test_monotone_in_the_limits(pool: int, wanted: int, h: Headroom, lim: Limits, more: float, less: int) -> None:
    looser = Limits(lim.cpu_pressure + more, lim.memory_pressure + more, max(0, lim.memory_reserve - less))
    assert decide(pool, wanted, 0, h, looser).target >= decide(pool, wanted, 0, h, lim).target


LIM = Limits(cpu_pressure=40, memory_pressure=10, memory_reserve=GiB)


def test_cpu_pressure_holds_fully_with_the_status_line() -> None:
    v = decide(4, 7, 1, Headroom(cpu_some=63.2), LIM)
    assert (v.target, v.resource, v.figure, v.limit) == (4, "cpu", 63.2, 40)
    assert v.status() == "guard: cpu pressure 63% > 40%, holding at 4 of 7 wanted"


def test_memory_some_then_full_at_half_the_limit() -> None:
    assert decide(2, 5, 1, Headroom(memory_some=12, cpu_some=90), LIM).resource == "memory"
    full = decide(2, 5, 1, Headroom(memory_some=9, memory_full=5.5), LIM)
    assert (full.resource, full.limit, full.target) == ("memory_full", 5, 2)
    assert decide(2, 5, 1, Headroom(memory_some=9, memory_full=4.9), LIM).target == 5


def test_memory_room_holds_partly_at_the_workers_measured_size() -> None:
    h = Headroom(mem_available=3 * GiB + GiB // 2, worker_bytes=GiB)
    v = decide(4, 9, 1, h, LIM)  # 3.5 GiB - 1 GiB reserve: 2 more workers of 1 GiB
    assert (v.target, v.resource) == (6, "memory_available")
    assert v.status() == ("guard: memory available 3.5 GiB - reserve 1.0 GiB, 2 more of 1.0 GiB fit, "
                          "holding at 6 of 9 wanted")
    assert decide(4, 6, 1, h, LIM).target == 6
    assert decide(4, 9, 1, h, LIM, starting=1).target == 5  # one of them may not show in MemAvailable yet


def test_unknown_worker_size_holds_only_below_the_reserve() -> None:
    assert decide(1, 5, 1, Headroom(mem_available=2 * GiB), LIM).target == 5
    assert decide(1, 5, 1, Headroom(mem_available=GiB // 2), LIM).target == 1


def test_min_processes_is_never_held_and_unknown_figures_hold_nothing() -> None:
    assert decide(0, 3, 2, Headroom(cpu_some=100), LIM).target == 2
    assert decide(0, 3, 2, Headroom(), LIM) == Verdict(3, 3)


def test_worker_size_is_a_high_percentile_and_sizes_resolve() -> None:
    assert worker_size([]) is None
    assert worker_size([5]) == 5
    assert worker_size(list(range(1, 11))) == 9
    assert worker_size([100, 1, 2]) == 100
    assert resolve_bytes("10%", 1000) == 100 and resolve_bytes("10%", None) is None
    assert resolve_bytes("2048", None) == 2048 and resolve_bytes("infinity", 10) is None

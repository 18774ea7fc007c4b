"""The simulator's optional host model and the guard in the simulated pool."""

from __future__ import annotations

from dataclasses import replace

from dqagent.core.guard import Headroom, Limits, decide
from dqagent.sim.bench import DEFAULT_POOL, target_policy
from dqagent.sim.benchcli import host_rows as benchmark
from dqagent.sim.host import BENCH_GUARD, BENCH_HOST, HostModel
from dqagent.sim.model import simulate
from dqagent.sim.traces import TRACES, generate


def test_the_host_slows_every_task_only_beyond_its_capacity() -> None:
    host = HostModel(capacity=3, contention=0.25)
    assert [host.slowdown(n) for n in (0, 1, 3)] == [1.0, 1.0, 1.0]
    assert host.slowdown(6) == 2 * 1.25 and host.slowdown(6) < host.slowdown(7)
    assert host.cpu_pressure(3) == 0 and host.cpu_pressure(6) == 50
    # throughput (busy / slowdown) falls beyond capacity once over-commit costs something
    assert 6 / host.slowdown(6) > 10 / host.slowdown(10)
    # the figure the simulated agent hands the guard: 7 busy on 3 CPUs hold a scale-up, 5 do not
    assert decide(7, 10, 1, Headroom(cpu_some=host.cpu_pressure(7)), Limits(50, 10, 0)).target == 7
    assert decide(5, 9, 1, Headroom(cpu_some=host.cpu_pressure(5)), Limits(50, 10, 0)).target == 9


def test_without_a_host_the_simulation_is_unchanged_and_with_one_the_guard_drains_no_slower() -> None:
    workload = generate(TRACES["burst"], 1)
    pool = replace(DEFAULT_POOL, dispatch="first")  # as the guard's figures were measured (dev/bench --host)
    plain = simulate(workload, target_policy(pool), pool, 5.0)
    assert plain == simulate(workload, target_policy(pool), pool, 5.0, host=None, guard=BENCH_GUARD)
    off = simulate(workload, target_policy(pool), pool, 5.0, host=BENCH_HOST)
    on = simulate(workload, target_policy(pool), pool, 5.0, host=BENCH_HOST, guard=BENCH_GUARD)
    assert off.burst_drain_s[0] > plain.burst_drain_s[0]  # the over-committed host is slower
    assert on.burst_drain_s[0] < off.burst_drain_s[0] and on.worker_seconds < off.worker_seconds
    assert len(benchmark(1)) == 2

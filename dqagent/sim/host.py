"""An optional host model for the simulator: a host that runs `capacity` busy workers at full
speed, and slows every worker down beyond that; the benchmark's host and guard limits.

Model (an assumption, stated so it can be argued with): with `n` busy workers on a host of `capacity`,
a task that starts takes `n / capacity` times longer (the CPUs are shared), times `1 + contention x
(n - capacity) / capacity` (what over-commit costs on top: cache and memory contention, reclaim,
swapping). With `contention` 0 more workers beyond capacity gain nothing and lose nothing; above 0 they
make the whole pool slower. The host's CPU pressure is the share of the busy workers' time spent
waiting for a CPU, `100 x (1 - capacity / n)`: the `cpu some` the guard sees when the shared decision
step asks the simulated agent for the host's headroom (`dqagent.sim.agenttick`).

`./dev/bench --host` prints the benchmark line (dqagent.sim.benchcli.host_rows): a burst's drain time on
an over-committed host with and without the guard.
"""

from __future__ import annotations

from dataclasses import dataclass

from dqagent.core.guard import Limits


@dataclass(frozen=True, slots=True)
class HostModel:
    """`capacity`: busy workers the host runs at full speed; `contention`: the over-commit penalty."""

    capacity: float
    contention: float = 0.25

    def slowdown(self, busy: int) -> float:
        """How many times longer a task takes with `busy` workers running tasks (1 up to capacity)."""
        if busy <= self.capacity:
            return 1.0
        return busy / self.capacity * (1 + self.contention * (busy - self.capacity) / self.capacity)

    def cpu_pressure(self, busy: int) -> float:
        """Percent of the busy workers' time spent waiting for a CPU (the guard's `cpu some` here)."""
        return 0.0 if busy <= self.capacity else 100 * (1 - self.capacity / busy)


#: The benchmark's host: 3 workers' worth of CPU under a pool allowed 10 (over-committed 3.3x).
BENCH_HOST = HostModel(capacity=3, contention=0.25)
#: The guard at its defaults (GUARD_CPU_PRESSURE=50, GUARD_MEMORY_PRESSURE=10, no memory figures here).
BENCH_GUARD = Limits(cpu_pressure=50, memory_pressure=10, memory_reserve=0)

"""Other autoscalers, re-implemented from their documented behaviour, for comparison only.

They are not offered to users (not in `dqagent.core.policies.POLICIES`). Each follows the `Policy`
protocol so the simulator drives them exactly like dqagent's own policies.

- KEDA's Redis list scaler feeding the Kubernetes HPA: the metric is `LLEN` (ready), target
  `listLength` per replica; desired = ceil(metric / target), kept when within 10 %; synced every 15 s.
  `behavior` defaults: scale-up limited to max(100 % of current, +4 pods) per 15 s, scale-down to the
  highest recommendation of the last 300 s. "raw" applies no behavior at all.
- Celery `--autoscale`: grows at once to what the reserved + active work needs; shrinks only after a
  keepalive (30 s) without growth, and never below the busy processes.
- AWS target tracking on backlog per instance: target = acceptable latency / mean processing time
  (in messages per instance); CloudWatch's 1-minute metric is `ApproximateNumberOfMessagesVisible`
  (ready); scale-out at once, scale-in by the policy's 300 s cooldown, instances in warm-up ignored.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

from dqagent.core.policies import Decision, Observation, TargetState


@dataclass(frozen=True, slots=True)
class KedaHpa:
    """KEDA Redis list scaler + HPA (metric = LLEN), with or without the default `behavior`."""

    min_workers: int
    max_workers: int
    list_length: float = 5.0
    behavior: bool = True
    tolerance: float = 0.1
    stabilization_s: float = 300.0
    name: ClassVar[str] = "keda-hpa"

    def initial_state(self) -> TargetState:
        return TargetState()

    def decide(self, obs: Observation, state: TargetState) -> tuple[Decision, TargetState]:
        n = obs.workers
        desired = math.ceil(obs.ready / self.list_length)
        if n and abs(obs.ready / (n * self.list_length) - 1) <= self.tolerance:
            desired = n
        target = desired
        if self.behavior:
            state = state.remember(obs.now_s, desired, self.stabilization_s)
            if desired > n:
                target = min(desired, n + max(n, 4))
            elif desired < n:
                target = min(n, state.highest())
        return Decision(max(self.min_workers, min(self.max_workers, target)), "hpa"), state


@dataclass(frozen=True, slots=True)
class CeleryAutoscale:
    """Celery's autoscaler: up at once, down after `keepalive_s` quiet, never below busy processes."""

    min_workers: int
    max_workers: int
    threads: int
    keepalive_s: float = 30.0
    name: ClassVar[str] = "celery"

    def initial_state(self) -> float:
        return -math.inf

    def decide(self, obs: Observation, last_up_s: float) -> tuple[Decision, float]:
        n = obs.workers
        wanted = max(self.min_workers, min(self.max_workers, math.ceil(obs.outstanding / self.threads)))
        if wanted > n:
            return Decision(wanted, "grow"), obs.now_s
        busy = math.ceil(obs.in_flight / self.threads)
        if wanted < n and obs.now_s - last_up_s >= self.keepalive_s:
            return Decision(max(wanted, busy, n - 1), "shrink"), last_up_s
        return Decision(n, "keep"), last_up_s


@dataclass(frozen=True, slots=True)
class AwsBacklogPerInstance:
    """AWS target tracking on ready messages per instance (target = latency / processing time)."""

    min_workers: int
    max_workers: int
    threads: int
    mean_service_s: float
    acceptable_latency_s: float = 60.0
    cooldown_s: float = 300.0
    name: ClassVar[str] = "aws"

    def initial_state(self) -> float:
        return -math.inf

    def decide(self, obs: Observation, last_in_s: float) -> tuple[Decision, float]:
        per_instance = self.threads * self.acceptable_latency_s / self.mean_service_s
        n = obs.workers - obs.starting  # instances in warm-up do not count in the metric
        desired = max(self.min_workers, min(self.max_workers, math.ceil(obs.ready / per_instance)))
        if desired > obs.workers:
            return Decision(desired, "out"), last_in_s
        if desired < n and obs.now_s - last_in_s >= self.cooldown_s:
            return Decision(max(desired, obs.workers - 1), "in"), obs.now_s
        return Decision(obs.workers, "keep"), last_in_s

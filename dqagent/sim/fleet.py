"""Many hosts on one queue: fleet mode against independent agents, on long randomized runs.

`python -m dqagent.sim.fleet [--runs N] [--hours H]` prints one summary line per mode.

What runs is the agent's own fleet code: each simulated host has its own `FleetCoordinator` (with the
in-memory store that expires records like Redis), its own `TargetPolicy` state, its own poll phase and a
read delay (its demand figure is that many seconds old). The fleet's membership changes at random:
hosts join, leave (`systemctl stop`: they remove their record), die (their record lingers until its
TTL) and lose Redis for a while (they keep their workers, publish nothing, and come back).

A simplification, stated: demand is exogenous (a piecewise-constant level of outstanding messages that
jumps at random), i.e. the workers do not drain it. That is what the properties are about (how many
workers the fleet asks for, not how fast they drain); the single-host model (`dqagent.sim.model`) is
where waits and drain times are measured.

Checked on every run (`check=True` raises AssertionError naming the property):
- safety: the workers on reachable hosts never exceed the largest G a reachable host computed in the
  last TTL + poll, plus the workers of a host that was just cut, came back or joined (its MIN, started
  before its first decision), within TTL + a poll: epsilon 0 (`over G` prints the largest excess seen;
  `forming` the excess while the fleet forms, when hosts that start at one instant each decide alone);
- liveness: when demand and membership have been unchanged for TTL + 2 polls + the target policy's
  SCALE_DOWN_WINDOW (each host keeps its own stabilization window, so after a drop in demand the hosts
  agree on G once their windows have passed, as one host would scale down then), every reachable host
  computes the same G and they run exactly its split;
- partition: modelled as the agent behaves (a cut host keeps its workers and decides nothing; the agent
  itself is tested for it in tests/unit/test_fleet_agent.py and the bench);
- disruption (measured, printed): membership changes under unchanged demand after which another host
  gained workers on a join, or lost some on a leave, within TTL + 2 polls.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import random
from dataclasses import dataclass, field

from dqagent.config import Settings, parse_settings
from dqagent.errors import BrokerError
from dqagent.fleet import Member, apportion
from dqagent.fleetstore import FakeFleetStore, FleetCoordinator, record_ttl_ms
from dqagent.policies import Observation, Policy, TargetPolicy
from dqagent.reconciler import Census
from dqagent.step import Memory, Rules, Seen, recommend
from dqagent.workercmd import worker_shape

#: Simulation step (s): hosts poll on their own phases, rounded to this grid.
STEP_S = 0.5


@dataclass
class Host:
    name: str
    settings: Settings
    policy: Policy
    phase_s: float
    read_delay_s: float
    coordinator: FleetCoordinator
    state: object = None
    workers: int = 0
    #: "up", "cut" (no Redis), "dead", "gone" (left), "out" (not joined yet)
    mode: str = "out"
    next_tick_s: float = 0.0
    last_g: int = 0
    last_g_at: float = -math.inf


@dataclass
class _Change:
    """A host joined (or came back) or left (or died, or was cut): did another host move the wrong way?"""

    at_s: float
    host: str
    join: bool
    level: int
    before: dict[str, int]
    flapped: int = 0


@dataclass
class Summary:
    """One mode's figures over every run."""

    mode: str
    worker_seconds: float = 0.0
    need_seconds: float = 0.0
    max_over: int = 0
    over_seconds: float = 0.0
    #: Largest total above the largest recent G, beyond the workers of hosts just cut or back (epsilon).
    max_over_g: int = 0
    #: The same while the fleet forms (hosts started at one instant, each deciding alone at first).
    forming_over: int = 0
    converged: int = 0
    converge_checks: int = 0
    #: Membership changes under unchanged demand, and those where another host gained on a join or lost
    #: on a leave within TTL + 2 polls (minimal disruption says: none).
    changes: int = 0
    flaps: int = 0
    violations: list[str] = field(default_factory=list)

    def line(self) -> str:
        over = 100 * (self.worker_seconds / self.need_seconds - 1) if self.need_seconds else 0.0
        return (f"{self.mode:<19} worker-s {self.worker_seconds:>10.0f}  need-s {self.need_seconds:>10.0f}  "
                f"over-provisioning {over:>+6.1f}%  max over need {self.max_over:>3}  "
                f"time above need {self.over_seconds:>8.0f}s  "
                + (f"over G {self.max_over_g} (forming {self.forming_over})  "
                   f"converged {self.converged}/{self.converge_checks}  "
                   if self.mode == "fleet" else "")
                + f"others moved the wrong way on {self.flaps}/{self.changes} joins/leaves  "
                + f"violations {len(self.violations)}")


def host_settings(name: str, max_processes: int, tick_s: float, fleet: bool) -> Settings:
    return parse_settings({"SCALING_POLICY": "target", "TARGET_PER_WORKER": "10", "MIN_PROCESSES": "1",
                           "MAX_PROCESSES": str(max_processes), "CHECK_INTERVAL": str(tick_s),
                           "DEMAND_POLL_INTERVAL": str(tick_s), "REDIS_TIMEOUT": "1",
                           "DRAMATIQ_COMMAND": "/bin/sleep infinity", "FLEET": "sim" if fleet else "",
                           "FLEET_HOST_ID": name})


def demand_curve(rng: random.Random, hours: float) -> list[tuple[float, int]]:
    """(time, outstanding) steps: a new level every 1-10 minutes, bursts up to 400 messages."""
    out, t = [], 0.0
    while t < hours * 3600:
        out.append((t, rng.choice([0, 5, 20, 40, 60, 100, 150, 250, 400])))
        t += rng.uniform(60, 600)
    return out


def run_once(seed: int, hours: float, fleet: bool, summary: Summary, n_hosts: int = 4) -> None:
    """One randomized run; adds its figures to `summary` (one mode)."""
    rng = random.Random(seed)
    store = FakeFleetStore("sim")
    hosts: list[Host] = []
    for i in range(n_hosts):
        name = f"h{i}"
        s = host_settings(name, rng.choice([4, 6, 8]), rng.choice([1.0, 2.0, 5.0]), fleet)
        hosts.append(Host(name, s, TargetPolicy.from_settings(s, worker_shape(s.dramatiq_command, 1)),
                          rng.uniform(0, 5), rng.choice([0.0, 0.5, 1.0, 2.0]), FleetCoordinator(lambda _s: store)))
    for h in hosts:
        h.state = h.policy.initial_state()
    for h in hosts[:3]:
        h.mode, h.workers = "up", 1
    curve = demand_curve(rng, hours)
    events = sorted((rng.uniform(300, hours * 3600), h.name) for h in hosts for _ in range(3))
    per_worker = 10
    asyncio.run(_FleetRun(rng, store, hosts, curve, events, per_worker, fleet, summary).run(hours))


def _level(curve: list[tuple[float, int]], t: float) -> int:
    level = 0
    for at, v in curve:
        if at > t:
            break
        level = v
    return level


class _FleetRun:
    """One randomized run's loop: membership changes, each host's decision on its own phase, the measures."""

    def __init__(self, rng: random.Random, store: FakeFleetStore, hosts: list[Host], curve: list[tuple[float, int]],
                 events: list[tuple[float, str]], per_worker: int, fleet: bool, summary: Summary) -> None:
        self.rng, self.store, self.hosts, self.curve = rng, store, hosts, curve
        self.per_worker, self.fleet, self.summary = per_worker, fleet, summary
        self.by_name = {h.name: h for h in hosts}
        self.t = 0.0
        self.last_change = 0.0
        self.changed_at_level = 0
        self.ttl_s = max(record_ttl_ms(h.settings) for h in hosts) / 1000
        self.max_tick = max(h.settings.tick_interval_s() for h in hosts)
        self.recent_exits: list[tuple[float, int]] = []  # (when, workers) of hosts that left the reachable set
        self.pending: list[tuple[float, str]] = list(events)
        self.watched: list[_Change] = []

    async def run(self, hours: float) -> None:
        while self.t < hours * 3600:
            self.store.now_ms = int(self.t * 1000)
            level = _level(self.curve, self.t)
            if level != self.changed_at_level:
                self.changed_at_level, self.last_change = level, self.t
            await self.membership(level)
            await self.decide()
            self.watch(level)
            self.measure(level)
            self.t += STEP_S

    async def membership(self, level: int) -> None:
        """The membership events due now: a host joins, comes back, leaves, dies or loses Redis."""
        t, hosts = self.t, self.hosts
        while self.pending and self.pending[0][0] <= t:
            _, name = self.pending.pop(0)
            h = self.by_name[name]
            self.last_change = t
            joining = h.mode in ("out", "gone", "dead", "cut")
            if h.mode in ("out", "gone", "dead"):
                h.mode, h.workers, h.state = "up", h.settings.min_processes, h.policy.initial_state()
                self.recent_exits.append((t, h.workers))  # a joiner runs its MIN at once (the agent's start)
                h.coordinator = FleetCoordinator(lambda _s: self.store)
            elif h.mode == "cut":
                h.mode = "up"  # back with the workers it held: counted until the fleet rebalances
                self.recent_exits.append((t, h.workers))
            else:
                h.mode = self.rng.choice(["gone", "dead", "cut"])
                if h.mode in ("gone", "dead", "cut"):
                    self.recent_exits.append((t, h.workers))
                if h.mode == "gone":
                    await h.coordinator.leave(h.settings)
                if h.mode in ("gone", "dead"):
                    h.workers = 0
            self.watched.append(_Change(t, name, joining, level, {o.name: o.workers for o in hosts
                                                                 if o is not h and o.mode == "up"}))

    async def decide(self) -> None:
        """Each reachable host whose poll is due decides, as the agent does (in fleet mode through the step)."""
        t = self.t
        for h in self.hosts:
            if h.mode not in ("up", "cut") or t < h.next_tick_s:
                continue
            h.next_tick_s = (h.next_tick_s or h.phase_s) + h.settings.tick_interval_s()
            if h.mode == "cut":
                continue  # Redis unreachable: keep the workers, decide nothing (the agent's _redis_down)
            outstanding = _level(self.curve, max(0.0, t - h.read_delay_s))
            obs = Observation(now_s=t, queue_length=outstanding, ready=outstanding, in_flight=0, delayed=0,
                              workers=h.workers, starting=0)
            if self.fleet:  # the agent's rules 2 and 3 (`dqagent.step.recommend`) on a host without units
                seen = Seen(Census(running=h.workers, coming=0, going=0, failing=0), obs)
                try:
                    fleet_input = await h.coordinator.sync(h.settings, seen)
                except BrokerError:
                    continue
                decision, h.state, share, _ = recommend(Rules.from_settings(h.settings, h.policy), seen,
                                                        Memory(h.state), fleet_input)
                h.coordinator.remember(fleet_input, share)
                assert share is not None
                target = decision.target
                h.last_g, h.last_g_at = share.global_target, t
            else:
                decision, h.state = h.policy.decide(obs, h.state)
                target = decision.target
                h.last_g, h.last_g_at = target, t
            target = h.settings.clamp(target)
            h.workers = target
            if self.fleet:
                await h.coordinator.publish(h.settings, h.workers, 0)

    def watch(self, level: int) -> None:
        """Membership changes under unchanged demand: did another host move the wrong way meanwhile?"""
        t, summary = self.t, self.summary
        for c in [c for c in self.watched if t - c.at_s > self.ttl_s + 2 * self.max_tick or level != c.level]:
            self.watched.remove(c)
            if level == c.level:  # demand unchanged over the whole change: it counts
                summary.changes += 1
                summary.flaps += c.flapped
        for c in self.watched:
            for o in self.hosts:
                if o.name in c.before and o.mode == "up" and \
                        (o.workers > c.before[o.name] if c.join else o.workers < c.before[o.name]):
                    c.flapped = 1

    def measure(self, level: int) -> None:
        """Cost against need, and in fleet mode safety (no more than the recent G) and liveness."""
        summary = self.summary
        reachable = [h for h in self.hosts if h.mode == "up"]
        total = sum(h.workers for h in reachable)
        lo = sum(h.settings.min_processes for h in reachable)
        hi = sum(h.settings.max_processes for h in reachable)
        need = max(lo, min(hi, math.ceil(level / self.per_worker)))
        summary.worker_seconds += total * STEP_S
        summary.need_seconds += need * STEP_S
        summary.max_over = max(summary.max_over, total - need)
        if total > need:
            summary.over_seconds += STEP_S
        if self.fleet and reachable:
            self.check_fleet(reachable, total, lo, hi)

    def check_fleet(self, reachable: list[Host], total: int, lo: int, hi: int) -> None:
        t, summary, recent = self.t, self.summary, self.ttl_s + self.max_tick
        self.recent_exits = [(w, n) for w, n in self.recent_exits if t - w <= recent]
        g_max = max(h.last_g for h in reachable if t - h.last_g_at <= recent) \
            if any(t - h.last_g_at <= recent for h in reachable) else hi
        beyond = total - max(lo, min(hi, g_max)) - sum(n for _, n in self.recent_exits)
        if t < self.ttl_s + 2 * self.max_tick:  # the fleet forming: hosts that started together, each alone at first
            summary.forming_over = max(summary.forming_over, beyond)
            beyond = 0
        summary.max_over_g = max(summary.max_over_g, beyond)
        if beyond > 0:
            summary.violations.append(f"safety at {t:.0f}s: {total} > G {g_max}")
        quiet = t - self.last_change
        settle = self.ttl_s + 2 * self.max_tick + max(h.settings.scale_down_window_s for h in self.hosts)
        if abs(quiet - settle) < STEP_S / 2:
            summary.converge_checks += 1
            gs = {h.last_g for h in reachable}
            g = max(lo, min(hi, max(gs)))
            if len(gs) == 1 and total == g and \
                    all(h.workers == apportion(g, [_member(x) for x in reachable])[h.name] for h in reachable):
                summary.converged += 1
            else:
                summary.violations.append(f"liveness at {t:.0f}s: total {total}, G's {sorted(gs)}")


def _member(h: Host) -> Member:
    return Member(h.name, h.settings.fleet_weight or h.settings.max_processes, h.settings.min_processes,
                  h.settings.max_processes, h.workers)


def compare(runs: int, hours: float, seed: int = 1) -> tuple[Summary, Summary]:
    """(fleet, independent agents) over the same `runs` randomized scenarios."""
    fleet, alone = Summary("fleet"), Summary("independent agents")
    for i in range(runs):
        run_once(seed + i, hours, True, fleet)
        run_once(seed + i, hours, False, alone)
    return fleet, alone


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m dqagent.sim.fleet", description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--hours", type=float, default=6.0)
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args(argv)
    return summary(args.runs, args.hours, args.seed)


def summary(runs: int, hours: float, seed: int) -> int:
    """Print the fleet against independent agents (also the last part of `dev/bench`); 1 on a violation."""
    fleet, alone = compare(runs, hours, seed)
    print(f"{runs} runs x {hours:g} h, up to 4 hosts (MAX 4/6/8, polls 1/2/5 s, read delays 0-2 s), "
          "joins, leaves, deaths and Redis cuts at random")
    print(fleet.line())
    print(alone.line())
    for v in fleet.violations[:5]:
        print("  fleet:", v)
    return 1 if fleet.violations else 0


if __name__ == "__main__":
    raise SystemExit(main())

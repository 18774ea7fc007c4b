"""Fleet mode (pure): many hosts on one queue, one global target G, and this host's share of it.

No I/O and no clock: the members' records come in (read by `dqagent.broker.fleetstore` from the Redis the
hosts already share), a decision goes out. Every member computes the same split from the same records,
so no leader is elected and nothing but the records is written (see docs/fleet.md for the choice
against a leader lease and slot leases).

Records are untrusted input, parsed and bounded by `dqagent.core.fleet_records` (re-exported here).

The split is the Sainte-Laguë (Webster) divisor method, defined seat by seat:

- each member first holds its MIN; then seat after seat goes to the member with the highest priority
  `weight / (seats + 1/2)` among those below their MAX; equal priorities are ordered by rendezvous
  hashing of (host id, seat number), so the order of the records never matters;
- so every member's k-th seat has a priority of its own that depends on nobody else, and the split of G
  is the G highest-priority seats of all members. Two consequences, which largest-remainder
  (Hamilton) lacks (its Alabama and new-state paradoxes):
  - **house-monotone**: a larger G never gives a member fewer workers; so hosts that computed
    different G's (they read demand at different instants) run in total at most the largest of them;
  - **population-monotone**: a member joining never gives another member more workers, one leaving
    never gives another fewer; the others move only by what the joiner takes or the leaver frees.

`apportion` gives most seats in bulk (every seat above a divisor found by bisection) and only the last
few, at most about one per member, seat by seat; the result is the same seats.
"""

from __future__ import annotations

import dataclasses
import hashlib
import heapq
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from dqagent.core.fleet_records import MAX_MEMBERS, MAX_RECORD_BYTES, BadRecord, Member, parse_member, read_records
from dqagent.core.policies import Decision, Observation, Policy
from dqagent.core.untrusted import Rejection

__all__ = [
    "MAX_MEMBERS",
    "MAX_RECORD_BYTES",
    "BadRecord",
    "FleetView",
    "Member",
    "Share",
    "apportion",
    "fleet_bounds",
    "fleet_observation",
    "fleet_policy",
    "fleet_report",
    "headroom",
    "latest_decision",
    "parse_member",
    "read_records",
    "render_fleet",
    "rendezvous",
    "share_of",
]

def rendezvous(host: str, seat: int) -> int:
    """Highest-random-weight hash of (host, seat): the tie-break every member computes alike."""
    digest = hashlib.blake2b(f"{host}\0{seat}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def fleet_bounds(members: Iterable[Member]) -> tuple[int, int]:
    """(sum of MINs, sum of MAXes): the range G is clamped to."""
    ms = list(members)
    return sum(m.min_processes for m in ms), sum(m.max_processes for m in ms)


def apportion(total: int, members: Sequence[Member]) -> dict[str, int]:
    """Split `total` workers over `members` (clamped to their summed [MIN, MAX]); host -> share.

    The sum of the shares is exactly the clamped total; each share is within its member's [MIN, MAX].
    Depends only on the set of members (host, weight, MIN, MAX), never on their order. Raises
    ValueError on two records with one host id (the store keeps one key per host, so it never passes any).
    """
    hosts = [m.host for m in members]
    if len(set(hosts)) != len(hosts):
        raise ValueError("duplicate host ids in the fleet")
    lo, hi = fleet_bounds(members)
    left = max(lo, min(hi, total)) - lo
    shares = {m.host: m.min_processes for m in members}
    if left > len(members):
        shares = _bulk_seats(left, members)
        left -= sum(shares.values()) - lo
    heap: list[tuple[Fraction, int, str]] = []

    def push(m: Member) -> None:
        seats = shares[m.host]
        if seats < m.max_processes:
            # Webster's divisor seats + 1/2, written exactly: priority = 2w / (2s + 1).
            heapq.heappush(heap, (-Fraction(2 * m.weight, 2 * seats + 1), -rendezvous(m.host, seats + 1), m.host))

    by_host = {m.host: m for m in members}
    for m in members:
        push(m)
    while left > 0:
        _, _, host = heapq.heappop(heap)
        shares[host] += 1
        left -= 1
        push(by_host[host])
    return shares


def _seats_above(m: Member, p: int, q: int) -> int:
    """The seats `m` holds when it has every seat whose priority 2w / (2k - 1) (seat k) is above p/q > 0,
    within its [MIN, MAX]: k < (2wq + p) / 2p, counted in integers."""
    below = -(-(2 * m.weight * q + p) // (2 * p)) - 1
    return max(m.min_processes, min(m.max_processes, below))


def _bulk_seats(left: int, members: Sequence[Member]) -> dict[str, int]:
    """Shares that hold every seat above a divisor d, for the d found by bisection whose seats above it are
    as many as possible but at most `left` beyond the MINs: the seats above d are the best of all, so
    giving them at once and the rest seat by seat gives what seat by seat alone would. The bisection runs
    on floats, each tried d is used exactly (as a ratio of integers); it stops once at most one seat per
    member is left, or when float precision ends (what is left is still bounded by `left`)."""
    lo_total = sum(m.min_processes for m in members)

    def shares_at(d: float) -> dict[str, int]:
        p, q = d.as_integer_ratio()
        return {m.host: _seats_above(m, p, q) for m in members}

    low, high = 0.0, 2.0 * max(m.weight for m in members) + 1  # above `high`: no seat beyond the MINs
    best = {m.host: m.min_processes for m in members}
    while True:
        mid = (low + high) / 2
        if not low < mid < high:
            return best
        shares = shares_at(mid)
        given = sum(shares.values()) - lo_total
        if given > left:
            low = mid
            continue
        high, best = mid, shares
        if left - given <= len(members):
            return best


def latest_decision(members: Iterable[Member]) -> Member | None:
    """The member whose G is the most recent decision in the fleet (ties: highest host id); None before any."""
    decided = [m for m in members if m.decided_ms > 0]
    return max(decided, key=lambda m: (m.decided_ms, m.host), default=None)


def fleet_observation(own: Observation, me: Member, others: Sequence[Member]) -> Observation:
    """The fleet as one pool, as the policy sees it.

    `workers` is the fleet's latest G (clamped to the members' summed range), not the sum of the pools:
    while the hosts move to their shares of G, one poll after another, the sum passes through values a
    policy with a tolerance band would take for a new resting point, and different hosts would rest on
    different G's. G is the plan the pools are on their way to, as one host counts its starting units as
    capacity. Before any member has decided: this host's pool plus what the others published.
    """
    lo, hi = fleet_bounds((me, *others))
    latest = latest_decision((me, *others))
    workers = (max(lo, min(hi, latest.global_target)) if latest is not None
               else own.workers + sum(m.workers for m in others))
    return dataclasses.replace(own, workers=workers, starting=own.starting + sum(m.starting for m in others))


def fleet_policy(policy: Policy, lo: int, hi: int) -> Policy:
    """The same policy with the fleet's [sum of MINs, sum of MAXes] instead of this host's range.

    Policies are frozen dataclasses with `min_processes`/`max_processes` (both in dqagent.core.policies);
    raises TypeError for one that is not, rather than deciding with a single host's range.
    """
    if not dataclasses.is_dataclass(policy) or isinstance(policy, type):
        raise TypeError(f"policy {policy.name!r} has no fleet form (not a dataclass with min/max_processes)")
    fleet: Policy = dataclasses.replace(policy, min_processes=lo, max_processes=hi)
    return fleet


@dataclass(frozen=True, slots=True)
class Share:
    """This host's part of one fleet decision."""

    fleet: str
    #: The global target G, clamped to the members' summed [MIN, MAX].
    global_target: int
    #: This host's share of G (its target).
    share: int
    members: int
    decision: Decision

    def fields(self) -> dict[str, object]:
        """Journal fields of the decision line: FLEET=, FLEET_TARGET=, SHARE=, FLEET_MEMBERS=."""
        return {"fleet": self.fleet, "fleet_target": self.global_target, "share": self.share,
                "fleet_members": self.members}


@dataclass(frozen=True, slots=True)
class FleetView:
    """What one read of the fleet returned: the live members (this host's record included) and Redis's time."""

    fleet: str
    host: str
    members: tuple[Member, ...]
    now_ms: int
    #: Records this read skipped (`read_records`), reported by the agent.
    rejected: tuple[Rejection, ...] = ()

    def others(self) -> tuple[Member, ...]:
        return tuple(m for m in self.members if m.host != self.host)

    def age_s(self, m: Member) -> float:
        return max(0, self.now_ms - m.at_ms) / 1000


def headroom(g: int, me: Member, others: Iterable[Member]) -> int:
    """The most this host may run without the fleet exceeding G, given what the others last published
    (never below its MIN): a scale-up waits for the others to give up what is no longer theirs."""
    return max(me.min_processes, g - sum(m.workers for m in others))


def share_of(view: FleetView, me: Member, global_decision: Decision) -> Share:
    """This host's share of `global_decision.target` among the view's members (`me` is this host's current
    record: weight, MIN, MAX may have changed by a reload), and the target it runs now.

    The target is the share, except that a scale-up goes only as far as the `headroom` the others leave:
    a host that joins, or whose share grew because another's shrank, does not add workers before the
    others have published their smaller pools, so the fleet's published total stays within G. Once they
    have (within one poll of each), the target is the whole share. A scale-down is never held.
    """
    others = view.others()
    members = (*others, me)
    lo, hi = fleet_bounds(members)
    g = max(lo, min(hi, global_decision.target))
    share = apportion(g, members)[me.host]
    target = share
    room = headroom(g, me, others)
    if share > me.workers and share > room:
        target = max(me.workers, room)
    reason = (f"fleet {view.fleet}: {len(members)} members, G {g}"
              + (f" (policy {global_decision.target}, clamped to [{lo}, {hi}])" if g != global_decision.target else "")
              + f", share {share} (weight {me.weight} of {sum(m.weight for m in members)})"
              + (f", {target} until the others give up {share - target}" if target != share else "")
              + "; " + global_decision.reason)
    return Share(view.fleet, g, share, len(members), Decision(target, reason))


def fleet_report(view: FleetView, queue_length: int | None) -> dict[str, Any]:
    """`dqagent status --fleet` (JSON form): one entry per live member, the global demand and G.

    G is what the most recently published member computed (every member computes it; they differ only
    while demand or membership changes between their polls).
    """
    newest = max(view.members, key=lambda m: (m.at_ms, m.host), default=None)
    return {
        "fleet": view.fleet,
        "host": view.host,
        "global_demand": queue_length,
        "global_target": newest.global_target if newest else None,
        "targets_sum": sum(m.target for m in view.members),
        "running_sum": sum(m.running for m in view.members),
        "members": [{"host": m.host, "running": m.running, "starting": m.starting, "workers": m.workers,
                     "target": m.target, "weight": m.weight, "min_processes": m.min_processes,
                     "max_processes": m.max_processes, "heartbeat_age_s": round(view.age_s(m), 1),
                     "ttl_s": m.ttl_ms / 1000, "version": m.version, "decision": m.decision}
                    for m in view.members],
        "rejected": [{"kind": r.kind.value, "key": r.key, "reason": r.reason} for r in view.rejected],
    }


def render_fleet(r: dict[str, Any]) -> str:
    """The text form of `fleet_report`: a header, then one line per member (this host marked with *)."""
    def show(v: object) -> str:
        return "unavailable" if v is None else str(v)

    lines = [f"fleet {r['fleet']}: {len(r['members'])} members, global demand {show(r['global_demand'])}, "
             f"G {show(r['global_target'])} (targets sum {r['targets_sum']}, running {r['running_sum']})"]
    for m in r["members"]:
        mark = "*" if m["host"] == r["host"] else " "
        lines.append(f" {mark}{m['host']}  running {m['running']}  target {m['target']}  weight {m['weight']}  "
                     f"range {m['min_processes']}-{m['max_processes']}  heartbeat {m['heartbeat_age_s']:g}s ago "
                     f"(expires after {m['ttl_s']:g}s)")
    lines += [f"  skipped untrusted record: {x['key']}: {x['reason']}" for x in r.get("rejected", [])]
    return "\n".join(lines)

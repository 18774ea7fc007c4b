"""Whose fault a missed goal is (`python -m dqagent.sim.periodic --oracle`): the goals', the policy's, or the
forecaster's.

For each goal PREDICTIVE=on misses on a periodic case:
- **goals**: no policy within [MIN, MAX] meets it: p95, when MAX workers warm from the start (`Oracular.warm_p95_s`,
  the least wait any policy within MAX gives) miss it too; flaps or cost, when the cost bound
  (`dqagent.sim.bound`) at keda-hpa's flap count is above `target`'s + 10 %;
- **policy**: not ruled out, but the same floor fed the true future (`dqagent.sim.oracle`) misses it too;
- **forecaster**: the floor fed the true future meets it.
A case is "unattainable" when one of its misses is the goals' or its cost bound rules out the three goals
together, "policy" when, else, one is the policy's, and "forecaster" when the oracle meets every goal the
forecaster missed.

`Row` is one case of the periodic table and its goals (the issue's), `Oracular` what `--oracle` adds to it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from dqagent.sim.bench import Metrics
from dqagent.sim.bound import CostBound


@dataclass(frozen=True, slots=True)
class Oracular:
    """`--oracle`: the same floor fed the workload's true future (`dqagent.sim.oracle.Oracle`), the best wait
    any policy within MAX gives (MAX workers warm from the start, never moving), and the cost bound."""

    oracle: Metrics
    #: p95 wait (learnt) of the oracle run, and of MAX warm.
    oracle_p95_s: float
    warm_p95_s: float
    bound: CostBound | None


@dataclass(frozen=True, slots=True)
class Row:
    label: str
    periodic: bool
    target: Metrics
    predictive: Metrics
    hpa: Metrics
    #: p95 wait of the messages that arrived once the forecaster had learnt: target, predictive, hpa.
    learnt_p95_s: tuple[float, float, float]
    oracular: Oracular | None = None

    def met(self) -> dict[str, bool]:
        return self.goals(self.predictive, self.learnt_p95_s[1])

    def goals(self, m: Metrics, learnt_p95_s: float) -> dict[str, bool]:
        """The issue's goals for run `m` (its learnt p95 wait beside it) against `target` and keda-hpa."""
        t, k = self.target, self.hpa
        if self.periodic:
            lt = self.learnt_p95_s[0]
            return {"p95": learnt_p95_s <= 0.5 * lt or learnt_p95_s <= 1.0, "flaps": m.flaps <= k.flaps,
                    "cost": m.worker_seconds <= 1.10 * t.worker_seconds}
        return {"p95": m.p95_s <= 1.02 * t.p95_s or m.p95_s - t.p95_s <= 0.5, "flaps": m.flaps <= t.flaps,
                "cost": m.worker_seconds <= 1.02 * t.worker_seconds}


GOALS = "goals"
POLICY = "policy"
FORECASTER = "forecaster"


def unattainable(row: Row) -> set[str]:
    """The goals no policy within [MIN, MAX] meets on this case (see the module docstring)."""
    o = row.oracular
    assert o is not None, "run with oracle=True"
    out = set()
    lt = row.learnt_p95_s[0]
    if o.warm_p95_s > 0.5 * lt and o.warm_p95_s > 1.0:
        out.add("p95")
    if o.bound is not None and o.bound.lower_s > 1.10 * row.target.worker_seconds:
        out |= {"flaps", "cost"}
    return out


def blame(row: Row) -> dict[str, str]:
    """Each goal PREDICTIVE=on misses -> GOALS, POLICY or FORECASTER."""
    o = row.oracular
    assert o is not None, "run with oracle=True"
    by_oracle = row.goals(o.oracle, o.oracle_p95_s)
    never = unattainable(row)
    return {g: GOALS if g in never else FORECASTER if by_oracle[g] else POLICY
            for g, ok in row.met().items() if not ok}


def category(row: Row) -> str:
    """"met", "unattainable", "policy" or "forecaster" (the module docstring). A case whose cost bound at
    keda-hpa's flaps is above `target`'s + 10 % is unattainable whichever goals it missed: the bound is for
    policies that have each batch's workers up when it comes, as halving the wait needs."""
    whose = set(blame(row).values())
    o = row.oracular
    jointly = o is not None and o.bound is not None and o.bound.lower_s > 1.10 * row.target.worker_seconds
    return ("met" if not whose else "unattainable" if GOALS in whose or jointly else POLICY if POLICY in whose
            else FORECASTER)


def verdicts_markdown(rows: Sequence[Row]) -> str:
    """The oracle table: per periodic case the runs, the bounds, and whose fault each miss is."""
    lines = ["| case | p95 learnt: target / predictive / oracle / MAX warm (s) | flaps p / oracle / hpa | "
             "worker-s (x target): predictive / oracle / at hpa's flaps: bound / estimate | short gaps, held >= | "
             "oracle meets | case: missed by predictive: whose |", "|---|---|---|---|---|---|---|"]
    counts: dict[str, int] = {}
    for r in rows:
        o = r.oracular
        if o is None or not r.periodic:
            continue
        t, p = r.target, r.predictive
        lt, lp, _ = r.learnt_p95_s
        b = o.bound
        ws = t.worker_seconds
        bound = f"{b.lower_s / ws:.2f}x / {b.estimate_s / ws:.2f}x" if b is not None else "-"
        gaps = f"{b.short_gaps}, {b.held}" if b is not None else "-"
        meets = ", ".join(g for g, ok in r.goals(o.oracle, o.oracle_p95_s).items() if ok) or "none"
        kind = category(r)
        whose = f"{kind}: " + (", ".join(f"{g}: {w}" for g, w in blame(r).items()) or "-")
        counts[kind] = counts.get(kind, 0) + 1
        lines.append(f"| {r.label} | {lt:.1f} / {lp:.1f} / {o.oracle_p95_s:.1f} / {o.warm_p95_s:.1f} | "
                     f"{p.flaps} / {o.oracle.flaps} / {r.hpa.flaps} | {p.worker_seconds / ws:.2f}x / "
                     f"{o.oracle.worker_seconds / ws:.2f}x / {bound} | {gaps} | {meets} | {whose} |")
    total = sum(counts.values())
    lines.append("\nPeriodic cases: " + ", ".join(f"{kind} {counts.get(kind, 0)} of {total}"
                                                 for kind in ("met", "unattainable", POLICY, FORECASTER)))
    return "\n".join(lines)

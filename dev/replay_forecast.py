"""`dev/replay --predictive shadow|on`: what the agent's forecast said during a real replay (not a test).

For each run whose agent had PREDICTIVE on or in shadow: per burst of the trace, when the forecast first asked
for more workers than the policy (FORECAST_WOULD above the decision's target: shadow's "would have started")
within the period before it, how many it asked for, how many workers ran when the burst came, and the
forecast's recent error (FORECAST_ERROR) and state at that moment; then its error at the end of the run.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def forecast_lines(c: Any, t0: float, end: float) -> list[tuple[float, int, int, str, str, str]]:
    """The decision lines of a run that carry the forecast's fields: (time, workers, target, would, error,
    aside)."""
    from testbed.agent import journal

    out = []
    for rec in journal(c, "dqagent", "DQAGENT_EVENT=decision", f"--since=@{int(t0) - 1}"):
        t = int(rec["__REALTIME_TIMESTAMP"]) / 1e6
        if t0 <= t <= end and rec.get("FORECAST_MODE"):
            out.append((t, int(rec.get("WORKERS", 0)), int(rec.get("TARGET", 0)), str(rec.get("FORECAST_WOULD", "")),
                        str(rec.get("FORECAST_ERROR", "")), str(rec.get("FORECAST_ASIDE", ""))))
    return out


def forecast_report(runs: Sequence[Any]) -> None:
    """Print, per run with forecast lines, one row per burst (see the module)."""
    from replay import TRACES

    for run in runs:
        lines = [tuple(x) for x in run.forecast]
        if not lines:
            continue
        trace = TRACES[run.trace]
        print(f"\nforecast during {run.trace} seed {run.seed} (real seconds from the run's start; x{run.factor:g})")
        print("| burst at | would start from | would run | ran when it came | recent error then | state then |")
        print("|---|---|---|---|---|---|")
        period = (trace.bursts[1][0] - trace.bursts[0][0]) / run.factor if len(trace.bursts) > 1 else 60.0
        for at_trace, _ in trace.bursts:
            at = run.t0 + at_trace / run.factor
            before = [x for x in lines if at - period < x[0] <= at]
            early = [x for x in before if x[3] and int(x[3]) > x[2]]
            last = before[-1] if before else None
            print(f"| {at - run.t0:.0f} s | " + (f"{at - early[0][0]:.1f} s before" if early else "-")
                  + f" | {max((int(x[3]) for x in early), default=0) or '-'} | "
                  + (f"{last[1]} | {last[4] or 'unknown'} | {last[5] or 'trusted'} |" if last else "- | - | - |"))
        final = lines[-1]
        print(f"at the end: recent error {final[4] or 'unknown'}, {final[5] or 'trusted'}")

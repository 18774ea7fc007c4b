"""`dqagent simulate`: one trace, one or every policy, the metrics and optionally a plot."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from dqagent.sim.bench import DEFAULT_POOL, HEADER, LEGEND, contenders, format_row, metrics, run
from dqagent.sim.model import Result, oracle_worker_seconds
from dqagent.sim.traces import AGE_TRACES, TRACES, generate, load_trace


def add_simulate_parser(sub: Any) -> None:
    p = sub.add_parser("simulate", help="replay a workload trace against scaling policies (no systemd, no Redis)")
    p.add_argument("--trace", required=True, help=f"one of {', '.join([*TRACES, *AGE_TRACES])}, or a JSON trace file")
    p.add_argument("--policy", default="all", help=f"one of {', '.join(contenders())}, or all (default)")
    p.add_argument("--seed", type=int, default=1, help="random seed of the workload (default 1)")
    p.add_argument("--plot", type=Path, default=None, help="write backlog and workers over time to this PNG")


def run_simulate(args: argparse.Namespace) -> int:
    try:
        trace = load_trace(args.trace)
    except ValueError as exc:
        print(f"dqagent simulate: --trace: {exc}", file=sys.stderr)
        return 2
    from dqagent.sim.bench import age_contenders  # the MAX_QUEUE_AGE rows' variants

    roster = {**contenders(), **age_contenders()}
    if args.policy != "all" and args.policy not in roster:
        print(f"dqagent simulate: --policy: unknown {args.policy!r}, expected one of {', '.join(roster)} or all",
              file=sys.stderr)
        return 2
    chosen = list(roster.values()) if args.policy == "all" else [roster[args.policy]]
    pool = DEFAULT_POOL
    workload = generate(trace, args.seed)
    print(f"trace {trace.name}: {len(workload)} messages over {trace.duration_s:g}s"
          f" ({trace.description or 'from file'}), seed {args.seed}")
    print(HEADER)
    results: dict[str, Result] = {}
    for contender in chosen:
        results[contender.name] = run(contender, workload, pool)
        print(format_row(metrics(results[contender.name], trace.name, contender.name)))
    print(f"{trace.name:<11} {'oracle':<13} {'(zero wait, perfect packing) worker-seconds':>51} "
          f"{oracle_worker_seconds(workload, pool):>9.0f}")
    print(LEGEND)
    if args.plot is not None:
        return _plot(results, trace.name, args.plot)
    return 0


def _plot(results: dict[str, Result], trace: str, path: Path) -> int:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("dqagent simulate: --plot needs matplotlib: pip install 'dqagent[plot]'", file=sys.stderr)
        return 2
    fig, (top, bottom) = plt.subplots(2, 1, sharex=True, figsize=(11, 7))
    for name, result in results.items():
        if name == "max-warm" and len(results) > 1:
            continue  # a flat line at MAX: in the table, not worth a line among the policies
        t = [s.t_s / 60 for s in result.samples]
        # dqagent's own policy drawn on top and thicker, so it reads first among the others.
        style: dict[str, Any] = ({"linewidth": 2.0, "zorder": 3} if name == "target"
                                 else {"linewidth": 0.9, "alpha": 0.7})
        top.plot(t, [s.outstanding for s in result.samples], label=name, **style)
        bottom.step(t, [s.workers for s in result.samples], where="post", label=name, **style)
    top.set_ylabel("backlog (outstanding messages)")
    top.set_title(f"dqagent simulate --trace {trace}")
    bottom.set_ylabel("workers")
    bottom.set_xlabel("minutes")
    top.legend(loc="upper right", fontsize="small")
    bottom.legend(loc="upper right", fontsize="small")
    fig.tight_layout()
    try:
        fig.savefig(path, dpi=110)
    except OSError as exc:
        print(f"dqagent simulate: --plot {path}: {exc.strerror}", file=sys.stderr)
        return 1
    finally:
        plt.close(fig)
    print(f"plot written to {path}")
    return 0

"""Unit speed (a measurement, not a test): dqagent against systemctl on the same hardened worker units.

Boots the bench's throwaway systemd 252 (testbed/nspawn.py), installs dqagent exactly as on a host
(`dqagent install`, the hardened `dramatiq-worker@.service`, `/bin/sleep infinity` as DRAMATIQ_COMMAND,
PROCESS_STARTUP_DELAY=0), then for each N, in the same run:

- `systemctl start dramatiq-worker@{1..N}.service` vs `dqagent scale-up --processes N`,
- `systemctl stop  dramatiq-worker@{1..N}.service` vs `dqagent scale-down --processes N`,
- the agent's own loop (target policy, TARGET_PER_WORKER=1, a backlog of N): from its scale_up /
  scale_down decision to its last worker_started / worker_stopped event, from the journal,

then the adoption of 1,000 running units (`systemctl start dqagent`, which returns at READY=1, and the
agent's own time from its first log line to its `start` event) and the agent's VmRSS afterwards.
Every command runs inside the container through nsenter, both sides alike. Prints one table.
"""

from __future__ import annotations

import argparse
import signal
import statistics
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from testbed.agent import DQAGENT, install, journal, running_workers, set_backlog
from testbed.nspawn import Container, require_bench
from testbed.redis import RedisServer
from testbed.wait import wait_until

ENV = "/etc/dqagent/dqagent.env"


def timed(c: Container, cmd: list[str], timeout: float = 1800) -> float:
    return timed_run(c, cmd, timeout)[0]


def timed_run(c: Container, cmd: list[str], timeout: float = 1800) -> tuple[float, str]:
    """Seconds the command took, and its stdout."""
    t0 = time.monotonic()
    done = c.run(cmd, timeout=timeout, check=False)
    elapsed = time.monotonic() - t0
    if done.returncode != 0:
        # A rare start fails at the bench's cgroup v1 setup (then Restart=on-failure recovers it):
        # counted, reported, not fatal.
        print(f"  note: {' '.join(cmd[:4])} ... exited {done.returncode}: "
              f"{(done.stderr or done.stdout).strip().splitlines()[-1:]}", file=sys.stderr)
    return elapsed, done.stdout


def settle(c: Container, n: int) -> None:
    wait_until(f"{n} running", lambda: len(running_workers(c)) == n, timeout=120, interval=0.5)


def clean(c: Container) -> None:
    c.systemctl("stop", "dramatiq-worker@*", check=False)
    c.systemctl("reset-failed", "dramatiq-worker@*", check=False)
    settle(c, 0)


def units(n: int) -> str:
    return f"dramatiq-worker@{{1..{n}}}.service"


def journal_span(c: Container, since: str, first: str, last: str) -> float:
    """Seconds from the first `first` event to the last `last` event after cursor time `since`."""
    start = [r for r in journal(c, "dqagent", f"DQAGENT_EVENT={first}", "--since", since)]
    end = [r for r in journal(c, "dqagent", f"DQAGENT_EVENT={last}", "--since", since)]
    if not start or not end:
        return float("nan")
    return (int(end[-1]["__REALTIME_TIMESTAMP"]) - int(start[0]["__REALTIME_TIMESTAMP"])) / 1e6


def container_now(c: Container) -> str:
    return c.run(["date", "+%Y-%m-%d %H:%M:%S.%N"]).stdout.strip()[:23]


def agent_loop(c: Container, redis: RedisServer, n: int) -> tuple[float, float]:
    """The agent's own scale-up to n and back to 0, from its journal (decision to last worker event)."""
    c.systemctl("start", "dqagent")
    since = container_now(c)
    set_backlog(redis, n)
    wait_until(f"agent reached {n}", lambda: len(running_workers(c)) == n, timeout=900, interval=1)
    # Every start checked: started, or failed (a rare start fails at the bench's cgroup v1 setup; then
    # systemd's Restart= or the agent's next start brings the unit up without a second started line).
    wait_until("all starts checked", lambda: sum(len(journal(c, "dqagent", f"DQAGENT_EVENT={e}", "--since", since))
                                                 for e in ("worker_started", "worker_failed")) >= n,
               timeout=60, interval=0.5)
    failed = len(journal(c, "dqagent", "DQAGENT_EVENT=worker_failed", "--since", since))
    if failed:
        print(f"  agent loop at N={n}: {failed} start(s) failed their check (counted, not fatal)", file=sys.stderr)
    up = journal_span(c, since, "scale_up", "worker_started")
    since = container_now(c)
    set_backlog(redis, 0)
    wait_until("agent reached 0", lambda: not running_workers(c), timeout=900, interval=1)
    wait_until("all stops logged", lambda: len(journal(c, "dqagent", "DQAGENT_EVENT=worker_stopped",
                                                        "--since", since)) >= n, timeout=60, interval=0.5)
    down = journal_span(c, since, "scale_down", "worker_stopped")
    c.systemctl("stop", "dqagent")
    return up, down


def adoption(c: Container, n: int) -> tuple[float, float, int, float]:
    """Start n workers with systemctl, then time `systemctl start dqagent`; returns its figures."""
    timed(c, ["bash", "-c", f"systemctl start {units(n)}"])
    settle(c, n)
    since = container_now(c)
    whole = timed(c, ["systemctl", "start", "dqagent"])
    first = journal(c, "dqagent", "--since", since, "SYSLOG_IDENTIFIER=dqagent")
    starts = [r for r in first if r.get("DQAGENT_EVENT") == "start"]
    inside = (int(starts[-1]["__REALTIME_TIMESTAMP"]) - int(first[0]["__REALTIME_TIMESTAMP"])) / 1e6
    pid = c.unit_property("dqagent.service", "MainPID")
    rss_kb = int(c.run(["awk", "/VmRSS/ {print $2}", f"/proc/{pid}/status"]).stdout.strip())
    adopted = len(journal(c, "dqagent", "DQAGENT_EVENT=adopted", "--since", since))
    t0 = time.monotonic()
    dq = c.run([DQAGENT, "--env-file", ENV, "status", "--json"], timeout=300)
    status_s = time.monotonic() - t0
    assert dq.returncode == 0
    return whole, inside, rss_kb, status_s if adopted == n else float("nan")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="50,200,500", help="instance counts (default 50,200,500)")
    parser.add_argument("--repeat", type=int, default=1, help="runs per figure; the median is shown")
    parser.add_argument("--adopt", type=int, default=1000, help="units to adopt (0 skips)")
    parser.add_argument("--loop-sizes", default="50,200,500",
                        help="instance counts also measured through the agent's own loop (default 50,200,500)")
    args = parser.parse_args()
    sizes = [int(x) for x in args.sizes.split(",") if x]
    loop_sizes = {int(x) for x in args.loop_sizes.split(",") if x}
    require_bench()
    # A plain `kill` still powers the container off (the finally below), like Ctrl+C.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    redis = RedisServer()
    c = Container()
    rows: list[tuple[str, int, float, float]] = []
    try:
        install(c, redis, now=False, MIN_PROCESSES=0, MAX_PROCESSES=1000, PROCESS_STARTUP_DELAY=0,
                CHECK_INTERVAL=1, SCALING_POLICY="target", TARGET_PER_WORKER=1, SCALE_UP_MAX_STEP=1000,
                SCALE_DOWN_WINDOW=0, LOG_LEVEL="INFO", GRACEFUL_SHUTDOWN_TIMEOUT=30)
        for n in sizes:
            figures: dict[str, list[float]] = {k: [] for k in ("sc_up", "dq_up", "sc_down", "dq_down",
                                                               "loop_up", "loop_down")}
            for i in range(args.repeat):
                # Alternate which side goes first, so a drifting machine does not favour one.
                order = ("sc", "dq") if i % 2 == 0 else ("dq", "sc")
                for side in order:
                    if side == "sc":
                        figures["sc_up"].append(timed(c, ["bash", "-c", f"systemctl start {units(n)}"]))
                        settle(c, n)
                        figures["sc_down"].append(timed(c, ["bash", "-c", f"systemctl stop {units(n)}"]))
                    else:
                        took, out = timed_run(c, [DQAGENT, "--env-file", ENV, "scale-up", "--processes", str(n)])
                        figures["dq_up"].append(took)
                        # A start that failed its check (the bench's rare 219/CGROUP) is stopped by
                        # dqagent (its crash-loop rule): the rest must run.
                        settle(c, n - out.count(": failed ("))
                        figures["dq_down"].append(timed(c, [DQAGENT, "--env-file", ENV, "scale-down",
                                                            "--processes", str(n)]))
                    clean(c)
                if n in loop_sizes:
                    try:
                        up, down = agent_loop(c, redis, n)
                    except AssertionError as exc:  # reported with the agent's last lines, not fatal
                        print(f"  agent loop at N={n}: {exc}", file=sys.stderr)
                        print(c.run(["journalctl", "-u", "dqagent", "-p", "warning", "-n", "30", "--no-pager"]).stdout,
                              file=sys.stderr)
                        c.systemctl("stop", "dqagent", check=False)
                    else:
                        figures["loop_up"].append(up)
                        figures["loop_down"].append(down)
                    clean(c)
            med = {k: statistics.median(v) if v else float("nan") for k, v in figures.items()}
            rows.append(("scale-up (dqagent scale-up)", n, med["dq_up"], med["sc_up"]))
            rows.append(("scale-up (agent loop)", n, med["loop_up"], med["sc_up"]))
            rows.append(("scale-down (dqagent scale-down)", n, med["dq_down"], med["sc_down"]))
            rows.append(("scale-down (agent loop)", n, med["loop_down"], med["sc_down"]))
            print(f"N={n}: " + ", ".join(f"{k} {v:.2f}s" for k, v in med.items()), file=sys.stderr, flush=True)
        adopt = adoption(c, args.adopt) if args.adopt else None
    finally:
        c.stop()
        redis.stop()

    print(f"\ncommit {commit}, {datetime.now().isoformat(timespec='minutes')}, "
          f"systemd 252 in systemd-nspawn, hardened dramatiq-worker@.service, /bin/sleep infinity workers, "
          f"PROCESS_STARTUP_DELAY=0, median of {args.repeat} run(s)\n")
    print("| operation | N | dqagent (s) | systemctl (s) | ratio |")
    print("|---|---:|---:|---:|---:|")
    for name, n, dq, sc in rows:
        if dq == dq:  # skip NaN (loop not measured)
            print(f"| {name} | {n} | {dq:.2f} | {sc:.2f} | {dq / sc:.2f}x |")
    if adopt:
        whole, inside, rss_kb, status_s = adopt
        print(f"\nadoption of {args.adopt} running units: `systemctl start dqagent` {whole:.2f} s "
              f"(to READY=1, Python start-up included); inside the agent (first log line to `start` event) "
              f"{inside:.2f} s; agent VmRSS afterwards {rss_kb / 1024:.1f} MiB; "
              f"`dqagent status --json` with {args.adopt} units {status_s:.2f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""`dqagent status` time with pools (a measurement, not a test): one pool of 100 running units, then 10 x 100.

Boots the bench's throwaway systemd 252 (testbed/nspawn.py), installs dqagent exactly as on a host
(`dqagent install`, `/bin/sleep infinity` as every pool's DRAMATIQ_COMMAND, the agent not started), then:

- one pool: the default pool with 100 running units (`dramatiq-worker@1..100`), no pool file;
- ten pools: the default pool and nine pool files (`pools.d/p1.env` .. `p9.env`), 100 running units each
  (`dramatiq-worker@pN-1..100`), 1,000 units in all,

and times `dqagent status` and `dqagent status --json` inside the container (through nsenter, as root, Python
start-up included), the median of `--repeat` runs each. Prints one table.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import statistics
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from testbed.agent import DQAGENT, install
from testbed.nspawn import Container, require_bench
from testbed.redis import RedisServer
from testbed.wait import wait_until

ENV = "/etc/dqagent/dqagent.env"
UNITS = 100
POOLS = [f"p{i}" for i in range(1, 10)]  # with the default pool: ten pools


def running(c: Container) -> int:
    out = c.systemctl("list-units", "dramatiq-worker@*", "--plain", "--no-legend", "--state=running").stdout
    return sum(1 for line in out.splitlines() if line.strip())


def start_units(c: Container, prefix: str, n: int) -> None:
    """`systemctl start` of n units of one pool (prefix "" for the default pool, "p1-" for pool p1)."""
    c.run(["bash", "-c", f"systemctl start --no-block dramatiq-worker@{prefix}{{1..{n}}}.service"], timeout=600)


def timed(c: Container, args: list[str], repeat: int) -> tuple[float, float]:
    """The medians of the wall time and of the CPU time (user + system, of the process and its children) of
    `dqagent status ...` over `repeat` runs, after one unmeasured warm-up run. The CPU time is the steadier
    figure on a shared machine; systemd's and the bus daemon's own CPU are not in it."""
    walls, cpus = [], []
    for i in range(repeat + 1):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.monotonic()
        done = c.run([DQAGENT, "--env-file", ENV, "status", *args], timeout=120, check=False)
        wall = time.monotonic() - t0
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if done.returncode != 0:
            raise RuntimeError(f"dqagent status {' '.join(args)} exited {done.returncode}: {done.stderr[-500:]}")
        if i:
            walls.append(wall)
            cpus.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
    return statistics.median(walls), statistics.median(cpus)


def check_counts(c: Container, pools: list[str]) -> None:
    """The report counts every unit in its pool (so the times are of a complete report)."""
    report = json.loads(c.run([DQAGENT, "--env-file", ENV, "status", "--json"]).stdout)
    counts = {name: p["current_processes"] for name, p in report.get("pools", {}).items()}
    assert counts == dict.fromkeys(["default", *pools], UNITS), counts


def pool_file(name: str) -> str:
    return (f'DRAMATIQ_QUEUE_NAME=q{name}\nDRAMATIQ_COMMAND="/bin/sleep infinity"\nMIN_PROCESSES=0\n'
            f"MAX_PROCESSES={UNITS}\n")


Row = tuple[str, int, tuple[float, float], tuple[float, float], str]


def measure(c: Container, repeat: int) -> list[Row]:
    rows: list[Row] = []
    start_units(c, "", UNITS)
    wait_until(f"{UNITS} running", lambda: running(c) == UNITS, timeout=600, interval=1)
    check_counts(c, [])
    rows.append(("one pool", UNITS, timed(c, [], repeat), timed(c, ["--json"], repeat), "< 0.2 s"))
    print(f"one pool: {rows[-1][2:4]}, load {os.getloadavg()[0]:.1f}", file=sys.stderr, flush=True)
    for name in POOLS:
        c.write(f"/etc/dqagent/pools.d/{name}.env", pool_file(name))
        start_units(c, f"{name}-", UNITS)
    total = UNITS * (len(POOLS) + 1)
    wait_until(f"{total} running", lambda: running(c) == total, timeout=1200, interval=2)
    check_counts(c, POOLS)
    time.sleep(10)  # the starts' load settles
    rows.append((f"{len(POOLS) + 1} pools", total, timed(c, [], repeat), timed(c, ["--json"], repeat), "< 0.5 s"))
    print(f"ten pools: {rows[-1][2:4]}, load {os.getloadavg()[0]:.1f}", file=sys.stderr, flush=True)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=5, help="runs per figure; the median is shown (default 5)")
    parser.add_argument("--hold", action="store_true",
                        help="after measuring, keep the container up (prints how to enter it) until SIGTERM")
    args = parser.parse_args()
    require_bench()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # powers the container off (the finally below)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                           text=True).stdout.strip()
    redis = RedisServer()
    c = Container()
    try:
        install(c, redis, now=False, MIN_PROCESSES=0, MAX_PROCESSES=UNITS, PROCESS_STARTUP_DELAY=0, GUARD="off")
        load = os.getloadavg()[0]
        rows = measure(c, args.repeat)
        if args.hold:
            print(f"holding: nsenter -t {c.leader} -a {DQAGENT} --env-file {ENV} status", file=sys.stderr, flush=True)
            signal.pause()
    finally:
        c.stop()
        redis.stop()

    print(f"\ncommit {commit}{' (with uncommitted changes)' if dirty else ''}, "
          f"{datetime.now().isoformat(timespec='minutes')}, systemd 252 in systemd-nspawn, /bin/sleep infinity "
          f"workers, run as root inside the container (Python start-up included), median of {args.repeat} runs; "
          f"load average {load:.1f} at the start, {os.getloadavg()[0]:.1f} at the end (2 CPUs, shared)\n")
    print("| pools | running units | `dqagent status`: wall (CPU) s | `status --json`: wall (CPU) s | goal (wall) |")
    print("|---|---:|---:|---:|---|")
    for name, n, (text_s, text_cpu), (json_s, json_cpu), goal in rows:
        print(f"| {name} | {n} | {text_s:.3f} ({text_cpu:.3f}) | {json_s:.3f} ({json_cpu:.3f}) | {goal} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Pools benchmark (a measurement, not a test; issue 22's "Benchmark"): adoption and CPU per check, 10 pools
x 100 units against 1 pool x 1,000 (and 1 pool x 100 for reference), ratios from one run.

Boots the bench's throwaway systemd 252 (testbed/nspawn.py), installs dqagent with `dqagent install`
(the hardened `dramatiq-worker@.service`, whose workers exec `/bin/sleep infinity` directly through a
drop-in, as tests/integration/test_systemd_scale.py does). Every pool has MIN_PROCESSES = MAX_PROCESSES
= its size, so the agent keeps what root started and never starts or stops a unit; the default pool
(dqagent.env) has MIN 0, MAX 1 and an empty queue. CHECK_INTERVAL=1 everywhere, LOG_LEVEL=INFO, GUARD=off.
One container, three phases in this order (units are started by root with systemctl beforehand):

- `10x100`: pool files p0..p9 (queues q0..q9), units dramatiq-worker@p0-1..100 ... @p9-1..100;
- `1x100`: the units of p1..p9 stopped, their pool files removed (p0 with its 100 units);
- `1x1000`: p0 with MAX 1000, units dramatiq-worker@p0-1..1000.

In each: `systemctl start dqagent`, from the start job (InactiveExitTimestampMonotonic) to READY
(ActiveEnterTimestampMonotonic) and to the last `adopted` journal record (its __MONOTONIC_TIMESTAMP,
journald's receipt); then the agent's utime+stime (/proc/<MainPID>/stat, all threads) over --checks
checks, counted with the agent's own `dqagent_decision_duration_seconds_count` (two scrapes of
METRICS_ADDRESS around the window); then `dqagent status --json` (root, median of 3). Between phases the
agent is SIGKILLed (a drop-in sets Restart=no) so that its shutdown does not stop the workers. Every
warning the agent logged is printed. Load averages are printed: the machine is shared.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from testbed.agent import DQAGENT, install, journal, running_workers
from testbed.nspawn import Container, require_bench
from testbed.redis import RedisServer, free_port
from testbed.wait import wait_until

ENV = "/etc/dqagent/dqagent.env"
POOLS_D = "/etc/dqagent/pools.d"
SLEEP_DROPIN = "/etc/systemd/system/dramatiq-worker@.service.d/50-bench-sleep.conf"
AGENT_DROPIN = "/etc/systemd/system/dqagent.service.d/50-bench.conf"
CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass
class Phase:
    name: str
    units: int
    start_s: float = float("nan")  # `systemctl start dqagent` as the caller saw it (nsenter included)
    ready_s: float = float("nan")  # start job -> READY
    adopted_s: float = float("nan")  # start job -> last `adopted` record
    adopted: int = 0
    checks: int = 0
    cpu_ms: float = float("nan")  # CPU per check, /proc/<pid>/stat (10 ms ticks)
    wall_ms: float = float("nan")  # the agent's own decision duration per check
    rss_mib: float = float("nan")
    status_s: float = float("nan")
    load: str = ""
    status_note: str = ""
    failure: str = ""
    warnings: list[str] = field(default_factory=list)


def loadavg() -> str:
    """The 1/5/15-minute load averages and the runnable/total tasks right now."""
    return " ".join(Path("/proc/loadavg").read_text().split()[:4])


def pool_file(c: Container, name: str, size: int) -> None:
    c.write(f"{POOLS_D}/{name}.env",
            f"DRAMATIQ_QUEUE_NAME=q{name[1:]}\nMIN_PROCESSES={size}\nMAX_PROCESSES={size}\nCHECK_INTERVAL=1\n"
            "PROCESS_STARTUP_DELAY=0\nGRACEFUL_SHUTDOWN_TIMEOUT=5\nDRAMATIQ_COMMAND=\"/bin/sleep infinity\"\n")


def start_units(c: Container, spec: str, total: int) -> float:
    """`systemctl start` the units of a brace pattern, then wait until `total` worker units run."""
    t0 = time.monotonic()
    done = c.run(["bash", "-c", f"systemctl start {spec}"], timeout=1800, check=False)
    if done.returncode:  # a rare start fails at the bench's cgroup v1 setup; Restart=on-failure recovers it
        print(f"  note: systemctl start {spec} exited {done.returncode}: {done.stderr.strip()[-300:]}",
              file=sys.stderr)
    wait_until(f"{total} running", lambda: len(running_workers(c)) == total, timeout=300, interval=1)
    wait_until("no systemd job left", lambda: "No jobs" in c.systemctl("list-jobs").stdout, timeout=120)
    return time.monotonic() - t0


def mono_us(c: Container, prop: str) -> int:
    return int(c.unit_property("dqagent.service", prop))


def cpu_ticks(c: Container, pid: str) -> int:
    fields = c.run(["cat", f"/proc/{pid}/stat"]).stdout.rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat(5))


def scrape(port: int) -> tuple[float, float]:
    """The agent's check count and total decision seconds, from its /metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        text = r.read().decode()
    values = {}
    for key in ("count", "sum"):
        m = re.search(rf"^dqagent_decision_duration_seconds_{key}(?:{{[^}}]*}})? (\S+)$", text, re.M)
        assert m, f"no dqagent_decision_duration_seconds_{key} in /metrics"
        values[key] = float(m.group(1))
    return values["count"], values["sum"]


def _checks_at_least(port: int, n: int) -> bool:
    try:
        return scrape(port)[0] >= n
    except OSError:  # the metrics server not listening yet
        return False


def run_phase(c: Container, phase: Phase, port: int, checks: int) -> None:
    """Start the agent, measure adoption, CPU per check and status, then SIGKILL it (the workers stay)."""
    phase.load = loadavg()
    t0 = time.monotonic()
    started = c.systemctl("start", "dqagent", check=False)
    phase.start_s = time.monotonic() - t0
    if started.returncode:
        lines = c.run(["journalctl", "-u", "dqagent", "-n", "60", "--no-pager", "-o", "short-monotonic"]).stdout
        phase.failure = f"`systemctl start dqagent` exited {started.returncode}: {started.stderr.strip()}"
        print(f"{phase.name}: {phase.failure}\n{lines}", file=sys.stderr, flush=True)
        phase.warnings = [line for line in lines.splitlines() if "dqagent[" in line or "systemd[" in line][-25:]
        c.systemctl("reset-failed", "dqagent", check=False)
        return
    began, ready = mono_us(c, "InactiveExitTimestampMonotonic"), mono_us(c, "ActiveEnterTimestampMonotonic")
    phase.ready_s = (ready - began) / 1e6
    pid = c.unit_property("dqagent.service", "MainPID")
    wait_until(f"{phase.units} adopted", lambda: len(journal(c, "dqagent", "DQAGENT_EVENT=adopted", f"_PID={pid}"))
               >= phase.units, timeout=30, interval=0.5)
    adopted = journal(c, "dqagent", "DQAGENT_EVENT=adopted", f"_PID={pid}")
    phase.adopted = len(adopted)
    phase.adopted_s = (max(int(r["__MONOTONIC_TIMESTAMP"]) for r in adopted) - began) / 1e6
    # A few checks to settle (the first ones after adoption follow every unit), then the window.
    wait_until("3 checks", lambda: _checks_at_least(port, 3), timeout=60)
    n0, sum0 = scrape(port)
    cpu0 = cpu_ticks(c, pid)
    time.sleep(checks)  # CHECK_INTERVAL=1
    cpu1 = cpu_ticks(c, pid)
    n1, sum1 = scrape(port)
    phase.checks = int(n1 - n0)
    phase.cpu_ms = (cpu1 - cpu0) * 1000 / CLK_TCK / max(phase.checks, 1)
    phase.wall_ms = (sum1 - sum0) * 1000 / max(phase.checks, 1)
    phase.rss_mib = int(c.run(["awk", "/VmRSS/ {print $2}", f"/proc/{pid}/status"]).stdout) / 1024
    took = []
    for _ in range(3):
        t = time.monotonic()
        done = c.run([DQAGENT, "--env-file", ENV, "status", "--json"], timeout=300, check=False)
        took.append(time.monotonic() - t)
    try:
        report = json.loads(done.stdout)
        phase.status_note = (f"pools {sorted(report['pools'])}" if "pools" in report else
                             f"no `pools` key; top-level current_processes={report.get('current_processes')}")
    except ValueError:
        phase.status_note = f"exit {done.returncode}, not JSON: {(done.stdout + done.stderr)[-300:]!r}"
    phase.status_s = statistics.median(took)
    phase.warnings = [r["MESSAGE"] for r in journal(c, "dqagent", f"_PID={pid}", "-p", "warning")]
    assert c.unit_property("dqagent.service", "ActiveState") == "active"
    print(f"{phase.name}: start {phase.start_s:.2f}s ready {phase.ready_s:.2f}s adopted {phase.adopted} "
          f"by {phase.adopted_s:.2f}s, {phase.checks} checks {phase.cpu_ms:.1f} ms CPU/check, "
          f"status {phase.status_s:.2f}s ({phase.status_note}), load {phase.load}, {len(phase.warnings)} warnings",
          file=sys.stderr, flush=True)
    # kill(2) inside the container, not `systemctl kill`: this bench's cgroup v1 answers the latter with EIO
    # now and then ("Failed to send signal SIGKILL to auxiliary processes: Input/output error").
    c.run(["kill", "-KILL", pid])
    wait_until("the agent gone", lambda: c.unit_property("dqagent.service", "ActiveState") in ("failed", "inactive"))
    c.systemctl("reset-failed", "dqagent", check=False)
    assert len(running_workers(c)) == phase.units, "a worker stopped during the phase"


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b else "-"


def table(phases: dict[str, Phase]) -> None:
    print("| pools x units | `systemctl start dqagent` (s) | start job -> READY (s) | -> last `adopted` (s) "
          "| checks | CPU/check (ms) | decision wall/check (ms) | RSS (MiB) | `status --json` (s) | load avg |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for p in phases.values():
        print(f"| {p.name} ({p.adopted} adopted) | {p.start_s:.2f} | {p.ready_s:.2f} | {p.adopted_s:.2f} "
              f"| {p.checks} | {p.cpu_ms:.1f} | {p.wall_ms:.1f} | {p.rss_mib:.1f} | {p.status_s:.2f} | {p.load} |")
    many, one, small = phases["10x100"], phases["1x1000"], phases["1x100"]
    print(f"\nratios, 10x100 / 1x1000: READY {ratio(many.ready_s, one.ready_s)}, last adopted "
          f"{ratio(many.adopted_s, one.adopted_s)}, CPU per check {ratio(many.cpu_ms, one.cpu_ms)}, "
          f"status {ratio(many.status_s, one.status_s)}; 10x100 / 1x100: CPU per check "
          f"{ratio(many.cpu_ms, small.cpu_ms)}")
    print(f"goals: 10x100 adopted within 2 s: {'met' if many.adopted_s < 2 and many.ready_s < 2 else 'NOT met'} "
          f"(READY {many.ready_s:.2f} s); status < 0.2 s for 1x100: "
          f"{'met' if small.status_s < 0.2 else 'NOT met'} ({small.status_s:.2f} s), < 0.5 s for 10x100: "
          f"{'met' if many.status_s < 0.5 else 'NOT met'} ({many.status_s:.2f} s)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checks", type=int, default=30, help="seconds (checks) of each CPU window (default 30)")
    args = parser.parse_args()
    require_bench()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # a plain `kill` still powers the container off
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    print(f"load average at start: {loadavg()}", file=sys.stderr, flush=True)
    port = free_port()
    redis = RedisServer()
    c = Container()
    phases: dict[str, Phase] = {}
    try:
        for i in range(10):
            pool_file(c, f"p{i}", 100)
        install(c, redis, now=False, MIN_PROCESSES=0, MAX_PROCESSES=1, CHECK_INTERVAL=1, PROCESS_STARTUP_DELAY=0,
                LOG_LEVEL="INFO", METRICS_ADDRESS=f"127.0.0.1:{port}")
        c.write(SLEEP_DROPIN, "[Service]\nExecStart=\nExecStart=/bin/sleep infinity\n")
        c.write(AGENT_DROPIN, "[Service]\nRestart=no\n")
        c.systemctl("daemon-reload")

        took = start_units(c, "dramatiq-worker@p{0..9}-{1..100}.service", 1000)
        print(f"1000 units started in {took:.0f}s (load {loadavg()})", file=sys.stderr, flush=True)
        phases["10x100"] = Phase("10x100", 1000)
        run_phase(c, phases["10x100"], port, args.checks)

        c.systemctl("stop", "dramatiq-worker@p[1-9]-*")
        for i in range(1, 10):
            (c.root / f"{POOLS_D}/p{i}.env".lstrip("/")).unlink()
        wait_until("100 running", lambda: len(running_workers(c)) == 100, timeout=120)
        phases["1x100"] = Phase("1x100", 100)
        run_phase(c, phases["1x100"], port, args.checks)

        pool_file(c, "p0", 1000)
        took = start_units(c, "dramatiq-worker@p0-{101..1000}.service", 1000)
        print(f"900 units started in {took:.0f}s (load {loadavg()})", file=sys.stderr, flush=True)
        phases["1x1000"] = Phase("1x1000", 1000)
        run_phase(c, phases["1x1000"], port, args.checks)
    finally:
        c.stop()
        redis.stop()

    print(f"\ncommit {commit}, {datetime.now().isoformat(timespec='minutes')}, systemd 252 in systemd-nspawn, "
          f"{os.cpu_count()} CPUs shared, /bin/sleep workers, CHECK_INTERVAL=1, MIN=MAX per pool, "
          f"{args.checks} s CPU windows, load average at the end {loadavg()}\n")
    table(phases)
    for p in phases.values():
        if p.failure:
            print(f"FAILED ({p.name}): {p.failure}")
        print(f"status --json ({p.name}): {p.status_note}")
        for w in dict.fromkeys(p.warnings):
            print(f"warning ({p.name}): {w}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

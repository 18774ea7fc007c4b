"""Replay a simulator workload on real Dramatiq workers under the real agent (not a test; run as root).

Boots the bench's throwaway systemd 252 (testbed/nspawn.py) with a private redis-server, installs dqagent
exactly as on a host with SCALING_POLICY=target and the sample app (testbed/app/dqtestapp.py) as
DRAMATIQ_COMMAND, then for each trace:

- draws the simulator's `Workload` (same trace, same seed) and compresses it by `--factor` (arrival
  and service times divided by it; the agent's time settings too: DEMAND_POLL_INTERVAL,
  SCALE_DOWN_WINDOW, PROCESS_STARTUP_DELAY), so the offered load is unchanged;
- enqueues message i at its arrival time through Dramatiq (`dqtestapp.timed`, a sleep of its drawn
  service time) and reads back enqueue/start/end per message from the Redis hash `dqtest:times`;
- reads the agent's events (every read's decision: it runs at LOG_LEVEL=DEBUG) and every worker unit's
  start job, its end, stop job and end from the journal (worker-seconds: from the start job to the
  unit's end), and when its Dramatiq worker process logged "ready for action" (the start-up delay);
- runs the simulator on what the real run was fed and met: the messages at their real enqueue times,
  the measured start-up delays and start jobs (at the nearest real start), the starts that failed, the
  median stop time, and the agent's own check on the simulated units (its start checks, stop order and
  backoff: `dqagent.sim.agenttick`, the agent's decision step), at 16 phases of the agent's reads (or at
  its real read times: `--models reads`), and prints both side by side with relative errors.

Everything is in real (compressed) seconds. `--save FILE` keeps the measurements as JSON and
`--load FILE` re-prints the comparison from them without booting anything.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dqagent.sim.bench import count_flaps, percentile, target_policy
from dqagent.sim.model import DISPATCH_MODELS, PoolConfig, simulate
from dqagent.sim.traces import Trace, Workload, compress, generate

#: Trace-time settings of the agent (the seed defaults); divided by the compression factor.
POLL_S, WINDOW_S, STARTUP_S, FLAP_WINDOW_S = 5.0, 120.0, 5.0, 600.0
#: The agent's CHECK_INTERVAL in the replay (`install_agent`; real seconds, not compressed): the slowest read.
CHECK_S = 60.0
#: systemd's catalog ids for a unit's start and stop jobs.
STARTING, STOPPED = "7d4958e842da4a758f6c1cdc7b36dcc5", "9d1aaa27d60140bd96365438aad20286"
STOPPING = "de5b426a63be47a7b6ac3eaac82e2f6f"
#: systemd's "Started" (the start job done: for Type=exec, the worker binary was executed).
STARTED = "39f53479d3a045ac8e11786248231fbf"
DEACTIVATED = "7ad2d189f7e94e70a38c781354912448"


def _spikes(duration_s: float, base: float) -> tuple[tuple[float, float], ...]:
    pts: list[tuple[float, float]] = [(0.0, base)]
    for start, width, height in ((90, 30, 7.0), (260, 45, 6.0), (450, 25, 7.5), (620, 40, 6.5), (790, 30, 7.0)):
        if start + width < duration_s:
            pts += [(start, base), (start + 2, height), (start + width, height), (start + width + 2, base)]
    return tuple(pts)


#: Replay-sized traces (trace seconds) for a pool of 4 threads x 1..4 workers (8 messages/s at 2 s).
TRACES: dict[str, Trace] = {t.name: t for t in (
    Trace("burst", 480, ((0, 0.3),), bursts=((60, 300),), description="300 messages at once on 0.3/s"),
    Trace("ramp", 900, ((0, 0.2), (300, 7.0), (450, 7.0), (750, 0.2)),
          description="0.2 -> 7/s over 5 min, 2.5 min plateau, back over 5 min"),
    Trace("spiky", 900, _spikes(900, 1.5), description="1.5/s with 25-45 s spikes to 6-7.5/s"),
    # The smoke test's (tests/integration/test_replay.py): seconds of real time.
    Trace("tiny", 20, ((0, 0.5),), bursts=((4, 40),), service_mean_s=0.5, description="40 at once on 0.5/s"),
    # PREDICTIVE's (`--predictive shadow`): a burst every 240 trace seconds (60 s real at the default x4).
    Trace("periodic", 1680, ((0, 0.2),), bursts=tuple((60.0 + 240 * k, 100) for k in range(7)),
          description="100 at once every 240 s on 0.2/s"),
)}
#: What `dev/replay` runs by default: a burst, a ramp and a spiky trace.
DEFAULT_TRACES = ("burst", "ramp", "spiky")


@dataclass(frozen=True, slots=True)
class Measured:
    """One run's figures, real (compressed) seconds."""

    trace: str
    source: str
    p50_s: float
    p95_s: float
    worker_seconds: float
    scales: int
    flaps: int
    startup_s: float = math.nan
    #: The simulator's lowest and highest p95 over the read phases it was run with (NaN: real, or one phase).
    p95_lo_s: float = math.nan
    p95_hi_s: float = math.nan


@dataclass
class Run:
    """What one real replay recorded (kept in --save files)."""

    trace: str
    factor: float
    seed: int
    threads: int
    min_workers: int
    max_workers: int
    t0: float
    end: float
    #: per message: (enqueued, started, ended), wall clock.
    times: list[tuple[float, float, float]]
    #: (wall time, +1 / -1) of the agent's scale actions.
    scale_events: list[tuple[float, int]]
    #: per unit start: [start, stop or None, ready for action or None, stop job began or None, start job done
    #: or None, pid that logged ready or None] (older saves have the first four)
    intervals: list[list[float | None]]
    #: per message: the pid of the worker process that ran it
    pids: list[int] = field(default_factory=list)
    #: the agent's journal events during the run: (wall time, DQAGENT_EVENT, MESSAGE)
    agent_events: list[tuple[float, str, str]] = field(default_factory=list)
    #: systemd's messages about the worker units that are not the ones `intervals` parses: (wall time, unit, text)
    unit_log: list[tuple[float, str, str]] = field(default_factory=list)
    #: PREDICTIVE (shadow, on): each decision line's (wall time, workers, target, FORECAST_WOULD, FORECAST_ERROR,
    #: FORECAST_ASIDE), `dev/replay_forecast.py`
    forecast: list[tuple[float, int, int, str, str, str]] = field(default_factory=list)

    def metrics(self) -> Measured:
        waits = [s - e for e, s, _ in self.times]
        cost = 0.0
        for start, stop, *_ in self.intervals:
            a = max(self.t0, start or self.t0)
            b = min(self.end, stop if stop is not None else self.end)
            cost += max(0.0, b - a)
        flap_window = FLAP_WINDOW_S / self.factor
        events = [(t - self.t0, d) for t, d in self.scale_events]
        return Measured(self.trace, "real", percentile(waits, 0.5), percentile(waits, 0.95), cost, len(events),
                        count_flaps(events, flap_window), self.startup_s())

    def shares(self) -> str:
        """How the messages spread over the worker processes that ran them (busiest first): first-fit
        dispatch would pile them on one, an even race spreads them."""
        if not self.pids or not any(self.pids):
            return ""
        counts = sorted(Counter(self.pids).values(), reverse=True)
        return "took " + " ".join(f"{c / len(self.pids):.0%}" for c in counts[:6])

    def startup_delays(self) -> list[tuple[float, float]]:
        """Each unit started during the run: (its start job, seconds after t0; -> ready for action, s), in order."""
        return [(iv[0] - self.t0, iv[2] - iv[0]) for iv in sorted(self.intervals, key=lambda iv: iv[0] or 0.0)
                if len(iv) > 2 and iv[0] is not None and iv[2] is not None and iv[0] >= self.t0]

    def start_job_delays(self) -> list[tuple[float, float]]:
        """Each unit started during the run: (its start job, seconds after t0; -> the job done, s), in order
        (empty for saves that did not record the job's end)."""
        return [(iv[0] - self.t0, iv[4] - iv[0]) for iv in sorted(self.intervals, key=lambda iv: iv[0] or 0.0)
                if len(iv) > 4 and iv[0] is not None and iv[4] is not None and iv[0] >= self.t0]

    def stop_delay_s(self) -> float:
        """Median time from a unit's stop job to its end (SIGTERM -> drained and exited); 0 if none stopped."""
        delays = [iv[1] - iv[3] for iv in self.intervals
                  if len(iv) > 3 and iv[1] is not None and iv[3] is not None and iv[1] >= self.t0]
        return statistics.median(delays) if delays else 0.0

    def failed_starts(self) -> list[float]:
        """Units started during the run that never got ready (a failed start; the agent retries after its
        backoff), seconds after t0."""
        return [t for t, _ in self.failures()]

    def failures(self) -> list[tuple[float, float]]:
        """The failed starts as (start, seconds after t0; -> the unit ended, s), in order: the model replays them."""
        return sorted((iv[0] - self.t0, iv[1] - iv[0]) for iv in self.intervals
                      if len(iv) > 3 and iv[0] is not None and iv[0] >= self.t0 and iv[2] is None
                      and iv[1] is not None and iv[3] is None)  # ended without a stop job: nobody stopped it

    def read_times(self) -> tuple[float, ...]:
        """When the agent read demand (its "decision" events), seconds after t0; empty unless it logged every
        read (LOG_LEVEL=DEBUG; at INFO it logs changes only): no gap longer than its slowest read (2 x
        DEMAND_POLL_INTERVAL) plus a second."""
        reads = [t - self.t0 for t, kind, _ in self.agent_events if kind == "decision" and t >= self.t0]
        slowest = 2 * POLL_S / self.factor + 1
        if not reads or any(b - a > slowest for a, b in zip([0.0, *reads], reads, strict=False)):
            return ()
        return tuple(reads)

    def enqueued(self) -> Workload:
        """The run's workload as it was really fed: each message at its enqueue time (seconds after t0).

        The harness enqueues from one thread of a loaded host, so in a spike a message can go in up to
        seconds after its drawn arrival: the agent reads (and the waits start from) that later time."""
        workload = workload_for(self.trace, self.seed, self.factor)
        return replace(workload, arrivals_s=tuple(e - self.t0 for e, _, _ in self.times))

    def startup_s(self) -> float:
        """Mean start-up delay of the units started during the run (NaN if none)."""
        delays = [d for _, d in self.startup_delays()]
        return statistics.mean(delays) if delays else math.nan


def workload_for(name: str, seed: int, factor: float) -> Workload:
    return compress(generate(TRACES[name], seed), factor)


#: The simulator's inputs `--models` offers: the run's enqueue times, start jobs and failed starts ("agent");
#: the same reading demand exactly when the real agent did ("reads", for runs whose agent logged every
#: decision); or fewer of them ("simple": the drawn arrival times, start jobs of 0, no failed starts). The
#: decisions are the agent's own in every model (`dqagent.core.step`).
MODELS = ("agent", "reads", "simple")


def predict(run: Run, dispatch: str, model: str = "agent", phases: int = 16) -> Measured:
    """The simulator on the same compressed workload and pool as `run`, its workers starting as slowly as
    that run's did at the same moments (its measured start-up delays and start job durations over time),
    with (`model` "agent") the starts that failed in it failing there too and stops and start checks as
    the agent's.

    The real agent's reads fall at some phase against the workload's clock that nobody chose, and a
    spike's wait can turn on whether a scale-down lands a second before it or after; so the simulator
    reads at `phases` evenly spread phases of one read interval, and the figures are their medians
    (p95_lo_s/p95_hi_s the range)."""
    if model == "reads":
        phases = 1
    runs = [_simulate(run, dispatch, model, k * POLL_S / run.factor / phases) for k in range(phases)]
    p95s = [m.p95_s for m in runs]

    def median(attr: str) -> float:
        return float(statistics.median(getattr(m, attr) for m in runs))

    return replace(runs[0], source=f"sim {dispatch}" + ("" if model == "agent" else f"/{model}"),
                   p50_s=median("p50_s"), p95_s=median("p95_s"), worker_seconds=median("worker_seconds"),
                   scales=round(median("scales")), flaps=round(median("flaps")),
                   p95_lo_s=min(p95s) if phases > 1 else math.nan, p95_hi_s=max(p95s) if phases > 1 else math.nan)


def _simulate(run: Run, dispatch: str, model: str, first_read_s: float) -> Measured:
    measured = model != "simple"
    workload = run.enqueued() if measured else workload_for(run.trace, run.seed, run.factor)
    reads = run.read_times() if model == "reads" else ()
    profile = tuple(run.startup_delays())
    boot = statistics.mean(d for _, d in profile) if profile else STARTUP_S / run.factor
    pool = PoolConfig(threads=run.threads, prefetch=2 * run.threads, startup_delay_s=boot,
                      min_workers=run.min_workers, max_workers=run.max_workers, dispatch=dispatch,
                      startup_profile_s=profile, stop_delay_s=run.stop_delay_s(), check_interval_s=CHECK_S,
                      check_delay_s=STARTUP_S / run.factor,
                      start_job_profile_s=tuple(run.start_job_delays()) if measured else (),
                      failed_starts_s=tuple(run.failures()) if measured else (), failure_match_s=POLL_S / run.factor)
    policy = target_policy(pool, SCALE_DOWN_WINDOW=f"{WINDOW_S / run.factor:g}")
    result = simulate(workload, policy, pool, POLL_S / run.factor, adaptive_reads=True, first_read_s=first_read_s,
                      read_times_s=reads)
    w = result.waits_s
    return Measured(run.trace, f"sim {dispatch}", percentile(w, 0.5), percentile(w, 0.95), result.worker_seconds,
                    len(result.scale_events), count_flaps(result.scale_events, FLAP_WINDOW_S / run.factor), boot)


def _err(sim: float, real: float) -> str:
    if real == 0:
        return "-" if sim == 0 else "inf"
    return f"{sim / real - 1:+.0%}"


def _row(m: Measured, extra: str = "") -> str:
    return (f"{m.trace:<7} {m.source:<16} {m.p50_s:>7.2f} {m.p95_s:>7.2f} {m.worker_seconds:>9.1f} "
            f"{m.scales:>6} {m.flaps:>5} {m.startup_s:>6.2f}  {extra}")


def report(runs: Sequence[Run], dispatches: Sequence[str], models: Sequence[str] = ("agent",),
           phases: int = 16) -> None:
    """Each real run beside the simulator's prediction for it, then the mean absolute errors."""
    print(f"{'trace':<7} {'source':<16} {'p50 s':>7} {'p95 s':>7} {'worker-s':>9} {'scales':>6} {'flaps':>5} "
          f"{'boot s':>6}  err p95 / worker-s (sim vs this run)")
    errors: dict[tuple[str, str], list[tuple[float, float]]] = {}
    pairs: dict[tuple[str, str], list[tuple[Measured, Measured]]] = {}
    for r in runs:
        m = r.metrics()
        failed = r.failed_starts()
        note = f"; {len(failed)} failed start(s) at {', '.join(f'{t:.0f}' for t in failed)} s" if failed else ""
        print(_row(replace(m, source=f"real s{r.seed}"), r.shares() + note))
        for model in models:
            if model == "reads" and not r.read_times():
                continue  # an older save: the agent logged only its changes
            for dispatch in dispatches:
                s = predict(r, dispatch, model, phases)
                span = "" if math.isnan(s.p95_lo_s) else f"  p95 {s.p95_lo_s:.2f}-{s.p95_hi_s:.2f}"
                inside = "" if not span else " (real inside)" if s.p95_lo_s <= m.p95_s <= s.p95_hi_s else ""
                print(_row(s, f"{_err(s.p95_s, m.p95_s):>5} / {_err(s.worker_seconds, m.worker_seconds)}"
                              f"{span}{inside}"))
                pairs.setdefault((r.trace, s.source[4:]), []).append((m, s))
                errors.setdefault((r.trace, s.source[4:]), []).append(
                    (s.p95_s / m.p95_s - 1 if m.p95_s else math.nan, s.worker_seconds / m.worker_seconds - 1))
    print("\nmean |error| over the runs (p95 wait / worker-seconds), and the error of the mean over the runs "
          "(sim mean / real mean - 1):")
    for (trace, source), errs in errors.items():
        p95 = statistics.mean(abs(e[0]) for e in errs)
        cost = statistics.mean(abs(e[1]) for e in errs)
        real, sim = zip(*pairs[(trace, source)], strict=True)
        of_means = [statistics.mean(getattr(x, k) for x in sim) / statistics.mean(getattr(x, k) for x in real) - 1
                    for k in ("p95_s", "worker_seconds")]
        print(f"  {trace:<7} {source:<14} {p95:>5.0%} / {cost:>4.0%}   of the mean {of_means[0]:>+5.0%} / "
              f"{of_means[1]:>+4.0%}  ({len(errs)} runs)")


# -- the real run (needs root and the bench) ---------------------------------------------------------


def replay_once(c: Any, redis: Any, name: str, seed: int, factor: float, threads: int, lo: int, hi: int) -> Run:
    from testbed.agent import APP_DIR, journal, running_workers
    from testbed.wait import wait_until

    workload = workload_for(name, seed, factor)
    os.environ["DQTEST_REDIS_URL"] = redis.url
    os.environ["DQTEST_QUEUE"] = "dqtest"
    sys.path.insert(0, str(APP_DIR))
    import dqtestapp

    # Given the pool at MIN, idle
    wait_until(f"{lo} workers", lambda: len(running_workers(c)) == lo, timeout=300, interval=1)
    wait_until("queue empty", lambda: int(redis.cli("HLEN", "dramatiq:dqtest.msgs")) == 0, timeout=300)
    redis.cli("DEL", dqtestapp.TIMES_KEY, dqtestapp.PIDS_KEY)
    time.sleep(1)
    t0 = time.time()
    # When each message is enqueued at its (compressed) arrival time
    for i, (at, service) in enumerate(zip(workload.arrivals_s, workload.services_s, strict=True)):
        delay = t0 + at - time.time()
        if delay > 0:
            time.sleep(delay)
        dqtestapp.timed.send(i, max(1, round(service * 1000)), time.time())
    n = len(workload)
    print(f"  {name}: {n} messages enqueued over {time.time() - t0:.0f}s; waiting for the last", flush=True)
    wait_until(f"{n} messages done", lambda: int(redis.cli("HLEN", dqtestapp.TIMES_KEY)) >= n,
               timeout=900, interval=1)
    raw = _hgetall(redis, dqtestapp.TIMES_KEY)
    pid_of = _hgetall(redis, dqtestapp.PIDS_KEY)
    times = [tuple(float(x) for x in raw[str(i)].split()) for i in range(n)]
    end = max(t0 + workload.trace.duration_s, max(t[2] for t in times))
    since = f"@{int(t0) - 1}"
    events = []
    for kind, sign in (("scale_up", 1), ("scale_down", -1)):
        for rec in journal(c, "dqagent", f"DQAGENT_EVENT={kind}", f"--since={since}"):
            t = int(rec["__REALTIME_TIMESTAMP"]) / 1e6
            if t0 <= t <= end:
                events.append((t, sign))
    events.sort()
    agent_events = sorted((int(rec["__REALTIME_TIMESTAMP"]) / 1e6, str(rec["DQAGENT_EVENT"]),
                           str(rec.get("MESSAGE", ""))) for rec in journal(c, "dqagent", f"--since={since}")
                          if rec.get("DQAGENT_EVENT"))

    def settled() -> bool:  # every unit started during the run is ready or ended, so its start-up is known
        return all(iv[2] is not None or iv[1] is not None
                   for iv in worker_intervals(c, t0 - 3600, end) if iv[0] is not None and iv[0] >= t0)

    wait_until("the run's workers ready or ended", settled, timeout=180, interval=2)
    unit_log: list[tuple[float, str, str]] = []
    intervals = worker_intervals(c, t0 - 3600, end, unit_log)
    from replay_forecast import forecast_lines

    return Run(name, factor, seed, threads, lo, hi, t0, end, [tuple(t) for t in times],  # type: ignore[misc]
               events, intervals, [int(pid_of.get(str(i), 0)) for i in range(n)], agent_events,
               [entry for entry in unit_log if entry[0] >= t0], forecast_lines(c, t0, end))


def _hgetall(redis: Any, key: str) -> dict[str, str]:
    flat = redis.cli("HGETALL", key).splitlines()
    return dict(zip(flat[0::2], flat[1::2], strict=True))


def worker_intervals(c: Any, since: float, end: float,
                     unit_log: list[tuple[float, str, str]] | None = None) -> list[list[float | None]]:
    """Each worker unit's [start job began, unit stopped (None: still running at `end`), its Dramatiq worker
    process "ready for action" (None: never), stop job began (None: not stopped), start job done (None:
    never), the pid that logged ready (None: never)], from the journal: systemd's own records (catalog ids)
    and the worker's log line, for starts since `since`. systemd's other messages about the units (why
    one failed) go to `unit_log`."""
    out = c.run(["journalctl", "-o", "json", "--no-pager", f"--since=@{int(since)}", "-u", "dramatiq-worker@*"]).stdout
    open_: dict[str, list[float | None]] = {}
    intervals: list[list[float | None]] = []
    for line in out.splitlines():
        rec = json.loads(line)
        t = int(rec["__REALTIME_TIMESTAMP"]) / 1e6
        if rec.get("_PID") != "1":
            unit = rec.get("_SYSTEMD_UNIT", "")
            if unit in open_ and open_[unit][2] is None and "ready for action" in str(rec.get("MESSAGE", "")):
                open_[unit][2] = t
                open_[unit][5] = float(rec.get("_PID", 0))
            continue
        unit = rec.get("UNIT", "")
        mid = rec.get("MESSAGE_ID")
        if mid == STARTING and unit not in open_:
            open_[unit] = [t, None, None, None, None, None]
        elif mid == STARTED and unit in open_:
            open_[unit][4] = t
        elif mid == STOPPING and unit in open_:
            open_[unit][3] = t
        elif mid in (STOPPED, DEACTIVATED) and unit in open_:
            iv = open_.pop(unit)
            iv[1] = t
            intervals.append(iv)
        elif unit_log is not None and unit.startswith("dramatiq-worker@"):
            unit_log.append((t, unit, str(rec.get("MESSAGE", ""))))
    intervals += list(open_.values())
    return intervals


def install_agent(c: Any, redis: Any, factor: float, threads: int, lo: int, hi: int,
                  predictive: str = "off") -> None:
    """dqagent as on a host: SCALING_POLICY=target, the sample app's real workers, the trace-time
    settings divided by `factor`."""
    from testbed.agent import APP_DIR, PYTHON, install

    c.write("/etc/dqagent/worker.env", f"DQTEST_REDIS_URL={redis.url}\nDQTEST_QUEUE=dqtest\n")
    install(c, redis, DRAMATIQ_COMMAND=f"{PYTHON} -m dramatiq --processes 1 --threads {threads} dqtestapp",
            WORKER_DIRECTORY=str(APP_DIR), SCALING_POLICY="target", MIN_PROCESSES=lo, MAX_PROCESSES=hi,
            CHECK_INTERVAL=60, DEMAND_POLL_INTERVAL=f"{POLL_S / factor:g}",
            SCALE_DOWN_WINDOW=f"{WINDOW_S / factor:g}", PROCESS_STARTUP_DELAY=f"{STARTUP_S / factor:g}",
            GRACEFUL_SHUTDOWN_TIMEOUT=60, PREDICTIVE=predictive,
            LOG_LEVEL="DEBUG")  # DEBUG: every read's decision, for the comparison


def real_runs(names: Sequence[str], runs: int, seed: int, factor: float, threads: int, lo: int,
              hi: int, predictive: str = "off") -> list[Run]:
    from testbed.nspawn import Container, require_bench
    from testbed.redis import RedisServer

    require_bench()
    redis = RedisServer()
    c = Container()
    try:
        install_agent(c, redis, factor, threads, lo, hi, predictive)
        done: list[Run] = []
        for k in range(runs):
            for name in names:
                run = replay_once(c, redis, name, seed + k, factor, threads, lo, hi)
                m = run.metrics()
                print(f"  {name} seed {seed + k}: p50 {m.p50_s:.2f}s p95 {m.p95_s:.2f}s worker-s "
                      f"{m.worker_seconds:.1f} scales {m.scales} flaps {m.flaps} boot {m.startup_s:.2f}s", flush=True)
                done.append(run)
        return done
    finally:
        c.stop()
        redis.stop()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="dev/replay", description=__doc__.split("\n")[0] if __doc__ else "")
    parser.add_argument("--traces", nargs="*", default=list(DEFAULT_TRACES), choices=list(TRACES), metavar="TRACE")
    parser.add_argument("--runs", type=int, default=1, help="real runs per trace (seeds seed, seed+1, ...)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--factor", type=float, default=4.0, help="time compression (default 4)")
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--min-workers", type=int, default=1)
    parser.add_argument("--max-workers", type=int, default=4)
    parser.add_argument("--dispatch", nargs="*", default=list(DISPATCH_MODELS), choices=DISPATCH_MODELS)
    parser.add_argument("--models", nargs="*", default=["agent"], choices=MODELS,
                        help="agent: the run's enqueue times, start jobs and failed starts (default); reads: and its "
                             "read times; simple: drawn arrivals, no start jobs, no failed starts")
    parser.add_argument("--phases", type=int, default=16, help="read phases the simulator runs (default 16)")
    parser.add_argument("--predictive", default="off", choices=("off", "shadow", "on"),
                        help="PREDICTIVE of the agent (shadow: the forecast's error and what it would have done, "
                        "per burst; try --traces periodic)")
    parser.add_argument("--save", type=Path, help="write the real measurements to this JSON file")
    parser.add_argument("--load", type=Path, action="append", default=[],
                        help="re-print the comparison from saved measurements (no bench)")
    args = parser.parse_args(argv)
    if args.factor <= 0 or args.runs < 1 or args.phases < 1:
        parser.error("--factor must be > 0, --runs >= 1 and --phases >= 1")
    if args.load:
        known = set(Run.__dataclass_fields__)
        runs = [Run(**{k: v for k, v in r.items() if k in known}) for path in args.load
                for r in json.loads(path.read_text())]
    else:
        runs = real_runs(args.traces, args.runs, args.seed, args.factor, args.threads, args.min_workers,
                         args.max_workers, args.predictive)
        if args.save:
            args.save.write_text(json.dumps([asdict(r) for r in runs]))
    print(f"\ncompression x{runs[0].factor:g}; real seconds; err = sim / real - 1; boot = mean start job -> "
          "ready for action; the simulator replays each run's enqueue times, start-up delays and start jobs (nearest "
          f"real start), failed starts and median stop time; sim rows: median over {args.phases} read phases "
          "(p95 range), /reads: at the run's own read times, /simple: drawn arrivals, no start jobs or failed starts")
    report(runs, args.dispatch, args.models, args.phases)
    from replay_forecast import forecast_report

    forecast_report(runs)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Prometheus metrics (opt-in): a collector over the agent's latest snapshot, `/metrics`, and a textfile.

`SnapshotCollector.collect()` only reads the `dqagent.core.snapshot.Snapshot` the loop published last (no
Redis or D-Bus call per scrape). It is registered in a `CollectorRegistry` of its own, never in
prometheus_client's global one (whose process and platform collectors would read /proc per scrape and
tie the output to the import). `Exporter` owns the effects: `METRICS_ADDRESS` is served by
prometheus_client's WSGI app from an asyncio loop in a daemon thread of its own (`Server`), with a cap
on open connections and a deadline per request, so neither fifty scrapes at once nor hundreds of
clients dribbling bytes run on the agent's loop or hold it, a tick or the watchdog; and
`METRICS_TEXTFILE` is rewritten after each tick for node_exporter's textfile collector.

Imported only when a metrics setting is set: prometheus_client costs a few hundred ms of import time.
Names follow Prometheus' conventions (`dqagent_` prefix, base units, `_total` counters, `_info`); the
full list is `METRIC_NAMES` (the Grafana dashboard's test checks its queries against it). Every worker and
queue series, and the scale actions, carry a `pool` label (the pool's name, "default" for dqagent.env's).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import socket
from collections.abc import Callable, Iterator
from pathlib import Path

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector, CollectorRegistry

from dqagent.core.snapshot import Direction, Snapshot
from dqagent.errors import EXIT_CONFIG, EXIT_UNAVAILABLE, DqAgentError
from dqagent.report.logs import event
from dqagent.report.metrics_http import Server, start_server
from dqagent.report.page import PageData
from dqagent.settings.config import parse_metrics_address

log = logging.getLogger(__name__)

#: Every series name the agent exports (histogram and info families by their exposed names).
METRIC_NAMES = frozenset({
    "dqagent_workers", "dqagent_workers_limit", "dqagent_queue_messages",
    "dqagent_queue_oldest_message_age_seconds", "dqagent_queue_consumers", "dqagent_scale_actions_total",
    "dqagent_worker_start_failures_total", "dqagent_decision_duration_seconds_bucket",
    "dqagent_decision_duration_seconds_sum", "dqagent_decision_duration_seconds_count",
    "dqagent_source_errors_total", "dqagent_redis_up", "dqagent_last_decision_timestamp_seconds",
    "dqagent_build_info", "dqagent_worker_oom_kills_total", "dqagent_guard_holding",
    "dqagent_broker_records_rejected_total", "dqagent_host_workers_limit", "dqagent_workers_share",
    "dqagent_pool_priority", "dqagent_pool_info", "dqagent_schedule_workers", "dqagent_paused",
    "dqagent_pause_start_timestamp_seconds", "dqagent_pause_expiry_timestamp_seconds", "dqagent_broker_failure",
    "dqagent_workers_activity", "dqagent_worker_hung_restarts_total",
    "dqagent_forecast_error_ratio", "dqagent_forecast_floor_workers", "dqagent_forecast_trusted",
    "dqagent_forecast_period_seconds",
})
#: The guard's resources (dqagent.core.guard.Verdict.resource), each a series of `dqagent_guard_holding`.
GUARD_RESOURCES = ("cpu", "memory", "memory_full", "memory_available")
#: Mode of the textfile: node_exporter runs as another user (the unit's UMask=0077 would hide it).
TEXTFILE_MODE = 0o644
def families(snap: Snapshot) -> Iterator[Metric]:
    """The metric families of one snapshot (pure: what a scrape and the textfile show)."""
    yield from _gauges(snap)
    yield from _pool_gauges(snap)
    yield from _activity(snap)
    yield from _counters(snap)


def _gauges(snap: Snapshot) -> Iterator[Metric]:
    """The host's: build, Redis, the host budget, when it last decided."""
    info = InfoMetricFamily("dqagent_build", "dqagent's version and the default pool's scaling policy",
                            labels=["version", "policy"])
    info.add_metric([snap.version, snap.default.policy], {})
    yield info
    yield GaugeMetricFamily("dqagent_redis_up", "1 if the last check read the broker, 0 if Redis failed",
                            value=1 if snap.redis_up else 0)
    if snap.host_max_processes is not None:
        yield GaugeMetricFamily("dqagent_host_workers_limit", "HOST_MAX_PROCESSES: worker processes of all "
                                "pools together; absent without a host budget", value=snap.host_max_processes)
    if snap.last_decision_s is not None:
        yield GaugeMetricFamily("dqagent_last_decision_timestamp_seconds",
                                "Unix time of the last completed decision", value=snap.last_decision_s)


def _pool_gauges(snap: Snapshot) -> Iterator[Metric]:
    """Each pool's (label `pool`): policy, priority, bounds, share, workers, queues."""
    info = InfoMetricFamily("dqagent_pool", "Each pool's scaling policy", labels=["pool", "policy"])
    priority = GaugeMetricFamily("dqagent_pool_priority", "POOL_PRIORITY (the host budget serves higher first)",
                                 labels=["pool"])
    limits = GaugeMetricFamily("dqagent_workers_limit", "MIN_PROCESSES and MAX_PROCESSES", labels=["pool", "bound"])
    share = GaugeMetricFamily("dqagent_workers_share", "Worker processes the pool's share of HOST_MAX_PROCESSES "
                              "allows once stops finish; absent without a host budget", labels=["pool"])
    workers = GaugeMetricFamily("dqagent_workers", "Worker units by state as the agent counts them "
                                "(failed includes auto-restart, also counted as starting), and desired",
                                labels=["pool", "state"])
    messages = GaugeMetricFamily("dqagent_queue_messages", "Messages in the Dramatiq broker by queue and state",
                                 labels=["pool", "queue", "state"])
    ages = GaugeMetricFamily("dqagent_queue_oldest_message_age_seconds",
                             "Age of the oldest ready message; absent for an empty queue", labels=["pool", "queue"])
    schedule = GaugeMetricFamily("dqagent_schedule_workers", "SCHEDULE's floor and ceiling in force (a floor from its "
                                 "pre-warm on); absent while no window sets them", labels=["pool", "bound"])
    broker = GaugeMetricFamily("dqagent_broker_failure", "1 while Redis cannot be read and BROKER_FAILURE (label "
                               "mode) sets the pool's count (min and fixed: after the grace period), else 0",
                               labels=["pool", "mode"])
    consumers = GaugeMetricFamily("dqagent_queue_consumers", "RabbitMQ only: the queue's consumers (one per Dramatiq "
                                  "worker process)", labels=["pool", "queue"])
    for p in snap.pools:
        for bound, value in (("floor", p.schedule_floor), ("ceiling", p.schedule_ceiling)):
            if value is not None:
                schedule.add_metric([p.name, bound], value)
        info.add_metric([p.name, p.policy], {})
        broker.add_metric([p.name, p.broker_failure], 1 if p.broker_failure_active else 0)
        priority.add_metric([p.name], p.priority)
        limits.add_metric([p.name, "min"], p.min_processes)
        limits.add_metric([p.name, "max"], p.max_processes)
        if p.share is not None:
            share.add_metric([p.name], p.share)
        if p.workers is not None:
            w = p.workers
            for state, n in (("running", w.running), ("starting", w.starting), ("stopping", w.stopping),
                             ("failed", w.failed), ("desired", w.desired)):
                workers.add_metric([p.name, state], n)
        for q in p.queues:
            for state, n in (("ready", q.ready), ("in_flight", q.in_flight), ("delayed", q.delayed),
                             ("dead_lettered", q.dead), ("orphaned", q.orphaned)):
                messages.add_metric([p.name, q.queue, state], n)
            if q.oldest_age_s is not None:
                ages.add_metric([p.name, q.queue], q.oldest_age_s)
            if q.consumers is not None:
                consumers.add_metric([p.name, q.queue], q.consumers)
    # A family without samples is left out (an empty family would still print its HELP and TYPE lines)
    yield from (f for f in (info, priority, limits, share, schedule, workers, messages, ages, consumers, broker)
                if f.samples)
    yield from _pause_gauges(snap)
    yield from _forecast_gauges(snap)


def _activity(snap: Snapshot) -> Iterator[Metric]:
    """What the running workers do by their own reports (`dqagent.dramatiq.WorkerReport`), per pool; the hung
    restarts. Totals only: no per-unit label."""
    activity = GaugeMetricFamily("dqagent_workers_activity", "Running workers by their own reports: busy (running "
                                 "or holding messages), idle, unreported (the app did not opt in, or starting)",
                                 labels=["pool", "activity"])
    hung = CounterMetricFamily("dqagent_worker_hung_restarts", "Workers restarted because their report stopped "
                               "advancing for WORKER_HUNG_AFTER", labels=["pool"])
    restarts = dict(snap.counters.hung_restarts)
    for p in snap.pools:
        for name, n in p.activity:
            activity.add_metric([p.name, name], n)
        hung.add_metric([p.name], restarts.get(p.name, 0))
    yield from (f for f in (activity, hung) if f.samples)


def _pause_gauges(snap: Snapshot) -> Iterator[Metric]:
    """`dqagent pause`: whether each pool is paused (2: maintenance), since and until when."""
    paused = GaugeMetricFamily("dqagent_paused", "1 while `dqagent pause` holds the pool, 2 in maintenance "
                               "(`pause --at N`), 0 otherwise", labels=["pool"])
    since = GaugeMetricFamily("dqagent_pause_start_timestamp_seconds", "Unix time the pool's pause began; "
                              "absent when not paused", labels=["pool"])
    until = GaugeMetricFamily("dqagent_pause_expiry_timestamp_seconds", "Unix time the pool's pause ends by "
                              "itself; absent when not paused or paused until resumed (--for forever)", labels=["pool"])
    for p in snap.pools:
        paused.add_metric([p.name], 0 if p.pause is None else 1 if p.pause.at is None else 2)
        if p.pause is not None:
            since.add_metric([p.name], p.pause.since_s)
            if p.pause.until_s is not None:
                until.add_metric([p.name], p.pause.until_s)
    yield from (f for f in (paused, since, until) if f.samples)


def _forecast_gauges(snap: Snapshot) -> Iterator[Metric]:
    """PREDICTIVE (pools with shadow or on, after their first check): how right the forecast is, and its floor."""
    error = GaugeMetricFamily("dqagent_forecast_error_ratio", "The forecast's weighted absolute percentage error "
                              "(0.25 = 25%) over its recent scores (window=recent, what it is trusted on) or the last "
                              "day (window=day); absent while too few forecasts are scored", labels=["pool", "window"])
    floor = GaugeMetricFamily("dqagent_forecast_floor_workers", "Workers the forecast asks for at the last check (a "
                              "floor under the policy's target with PREDICTIVE=on; 0 while it steps aside)",
                              labels=["pool"])
    trusted = GaugeMetricFamily("dqagent_forecast_trusted", "1 while the forecast is trusted (it acts with "
                                "PREDICTIVE=on, label mode), 0 while it steps aside", labels=["pool", "mode"])
    period = GaugeMetricFamily("dqagent_forecast_period_seconds", "The short regular period the forecast found; "
                               "absent when none is found", labels=["pool"])
    for p in snap.pools:
        f = p.forecast
        if f is None:
            continue
        for window, value in (("recent", f.error_recent), ("day", f.error_day)):
            if value is not None:
                error.add_metric([p.name, window], value)
        floor.add_metric([p.name], f.floor)
        trusted.add_metric([p.name, str(f.mode)], 1 if f.trusted else 0)
        if f.period_s is not None:
            period.add_metric([p.name], f.period_s)
    yield from (m for m in (error, floor, trusted, period) if m.samples)


def _counters(snap: Snapshot) -> Iterator[Metric]:
    """What the loop did since it started: actions, failures, the guard's hold, errors, skipped data, durations."""
    c = snap.counters
    actions = CounterMetricFamily("dqagent_scale_actions", "Scale actions issued, by pool, direction and reason "
                                  "(the policy's name, startup, min_processes, max_processes, delayed_messages, "
                                  "host_budget, schedule, pause, broker_failure, forecast)",
                                  labels=["pool", "direction", "reason"])
    seen = dict(c.scale_actions)
    for p in snap.pools:  # each pool's policy series exist from the start, so rate() sees the first action
        for d in Direction:
            seen.setdefault((p.name, d.value, p.policy), 0)
    for (pool, direction, reason), n in sorted(seen.items()):
        actions.add_metric([pool, direction, reason], n)
    yield actions
    yield CounterMetricFamily("dqagent_worker_start_failures", "Worker starts that failed their "
                              "PROCESS_STARTUP_DELAY check", value=c.start_failures)
    yield CounterMetricFamily("dqagent_worker_oom_kills", "Workers the kernel killed for memory "
                              "(systemd's Result=oom-kill)", value=c.oom_kills)
    if snap.guard_holding is not None:
        holding = GaugeMetricFamily("dqagent_guard_holding", "1 while the guard holds a scale-up for this "
                                    "resource's lack of headroom; absent when GUARD=off", labels=["resource"])
        for resource in GUARD_RESOURCES:
            holding.add_metric([resource], 1 if snap.guard_holding == resource else 0)
        yield holding
    errors = CounterMetricFamily("dqagent_source_errors", "Failed reads or requests, by source", labels=["source"])
    for source, n in c.source_errors:
        errors.add_metric([source], n)
    yield errors
    rejected = CounterMetricFamily("dqagent_broker_records_rejected", "Values read from the broker's Redis and "
                                   "skipped as untrusted (each read that skipped one), by kind", labels=["kind"])
    for kind, n in c.records_rejected:
        rejected.add_metric([kind], n)
    yield rejected
    h = c.decision_duration
    yield HistogramMetricFamily("dqagent_decision_duration_seconds", "Duration of one check (read, decide, act)",
                                buckets=[(_le(b), n) for b, n in h.cumulative()], sum_value=h.sum)


def _le(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(float(bound))


class SnapshotCollector(Collector):
    """A custom collector whose `collect()` reads only `latest()` (the agent's last snapshot)."""

    def __init__(self, latest: Callable[[], Snapshot | None]) -> None:
        self._latest = latest

    def collect(self) -> Iterator[Metric]:
        snap = self._latest()  # one read of one attribute: a whole snapshot, old or new
        if snap is not None:
            yield from families(snap)

    def describe(self) -> Iterator[Metric]:
        return iter(())  # registration must not collect (there may be no snapshot yet)


def registry_for(latest: Callable[[], Snapshot | None]) -> CollectorRegistry:
    """A registry of its own holding only the snapshot collector."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SnapshotCollector(latest))
    return registry


def write_textfile(path: Path, registry: CollectorRegistry) -> None:
    """Atomically replace `path` with the registry's text (temporary file beside it, then rename).

    Like `prometheus_client.write_to_textfile`, but the file is created `TEXTFILE_MODE` whatever the
    umask, so node_exporter (another user) can read it. Raises `OSError`; no temporary file is left.
    """
    data = generate_latest(registry)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # not *.prom: node_exporter never reads it
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, TEXTFILE_MODE)
        with os.fdopen(fd, "wb") as out:
            os.fchmod(out.fileno(), TEXTFILE_MODE)
            out.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


class MetricsError(DqAgentError, OSError):
    """`METRICS_ADDRESS` cannot be served; `exit_code` says whether retrying may help."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class Exporter:
    """The `/metrics` server and the textfile of one agent, over its `latest` snapshot."""

    def __init__(self, latest: Callable[[], Snapshot | None], address: str, textfile: str,
                 page: Callable[[], PageData | None] | None = None) -> None:
        self.registry = registry_for(latest)
        self.page = page  # the status page's data, served beside /metrics (`dqagent.report.pageapp`)
        self.address = ""
        self.textfile = Path(textfile) if textfile else None
        self._server: Server | None = None
        self._textfile_error = ""
        self._want = address

    def start(self) -> None:
        """Listen on the address given at construction (if any). Raises `MetricsError` in one line."""
        self.serve(self._want)

    def serve(self, address: str) -> None:
        """Stop serving the old address and listen on `address` ("" : not at all)."""
        self.close_server()
        if not address:
            return
        parsed = parse_metrics_address(address)
        assert parsed is not None
        host, port = parsed
        try:
            self._server = start_server(host, port, self.registry, self.page)
        except OSError as exc:
            # A port in use may come free (systemd restarts us); anything else is the setting's fault.
            code = EXIT_UNAVAILABLE if exc.errno == errno.EADDRINUSE else EXIT_CONFIG
            reason = f"unknown host ({exc})" if isinstance(exc, socket.gaierror) else (exc.strerror or str(exc))
            raise MetricsError(f"cannot serve metrics on METRICS_ADDRESS={address}: {reason}; expected an "
                               "address of this host and a free port above 1023 (e.g. 127.0.0.1:9810)", code) from None
        self.address = address
        log.info("serving Prometheus metrics on http://%s/metrics", address,
                 extra=event("metrics_listening", address=address))

    def publish(self) -> None:
        """After a new snapshot: rewrite the textfile (a failure is logged once, until it works again)."""
        if self.textfile is None:
            return
        try:
            write_textfile(self.textfile, self.registry)
        except OSError as exc:
            message = f"{exc.strerror or exc}"
            if message != self._textfile_error:
                log.error("cannot write METRICS_TEXTFILE=%s: %s", self.textfile, message,
                          extra=event("metrics_textfile_error", error=message))
            self._textfile_error = message
            return
        if self._textfile_error:
            log.info("METRICS_TEXTFILE=%s written again", self.textfile, extra=event("metrics_textfile_ok"))
            self._textfile_error = ""

    def close_server(self) -> None:
        if self._server is not None:
            self._server.close()
        self._server = None
        self.address = ""

    def close(self) -> None:
        self.close_server()

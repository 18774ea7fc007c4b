"""Metrics: the snapshot's counters, the collector over hand-built snapshots, the settings,
the agent loop's snapshots (with the fakes), the exporter's server and textfile on this host, and the
Grafana dashboard's queries. The agent unit's scrapes are tested in tests/integration/test_metrics.py."""

from __future__ import annotations

import asyncio
import gzip
import json
import logging
import math
import re
import socket
import stat
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from dqagent.agent.lifecycle import Agent
from dqagent.core.demand import QueueDemand
from dqagent.core.pause import Pause
from dqagent.core.policies import StepPolicy
from dqagent.core.prediction import ForecastReport, Mode
from dqagent.core.snapshot import (
    Accumulator,
    Direction,
    PoolFigures,
    Reason,
    Snapshot,
    Source,
    WorkerCounts,
    action_reason,
)
from dqagent.errors import EXIT_CONFIG, EXIT_UNAVAILABLE, BrokerError, ConfigError
from dqagent.report.metrics import METRIC_NAMES, Exporter, MetricsError, registry_for
from dqagent.report.metrics_http import LISTEN_BACKLOG
from dqagent.settings.config import parse_metrics_address, parse_settings
from tests.unit.fakes import FakeDemandProbe, FakeUnits, RecordingNotifier
from tests.unit.logged import events

DASHBOARD = Path(__file__).parents[2] / "docs" / "grafana-dashboard.json"


def samples(snap: Snapshot | None) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """What a scrape of `snap` shows, parsed back with prometheus_client's own parser."""
    text = generate_latest(registry_for(lambda: snap)).decode()
    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def default_pool(**kw: object) -> PoolFigures:
    values: dict[str, object] = dict(
        name="default", policy="step", min_processes=1, max_processes=8,
        workers=WorkerCounts(running=3, starting=1, stopping=2, failed=1, desired=4),
        queues=(QueueDemand("a", ready=5, outstanding=9, delayed=2, dead=1, orphaned=0, oldest_age_s=12.5),
                QueueDemand("b", ready=0, outstanding=0, delayed=0, dead=0, orphaned=0)),
        activity=(("busy", 1), ("idle", 2), ("unreported", 0)))
    values.update(kw)
    return PoolFigures(**values)  # type: ignore[arg-type]


def snapshot(pool: PoolFigures | None = None, **kw: object) -> Snapshot:
    """A single-pool snapshot (no HOST_MAX_PROCESSES); `pool` replaces the default pool's figures."""
    acc = Accumulator()
    acc.scale_action(Direction.UP, "step")
    acc.scale_action(Direction.UP, "step")
    acc.scale_action(Direction.DOWN, Reason.MIN_PROCESSES)
    acc.source_error(Source.REDIS)
    acc.decision_took(0.003)
    acc.decision_took(0.2)
    acc.start_failed()
    acc.start_failed()
    acc.oom_killed()
    acc.hung_restarts("default", 1)
    values: dict[str, object] = dict(
        version="9.9", taken_at_s=1e9, redis_up=True, pools=(pool or default_pool(),),
        last_decision_s=1e9 - 1, counters=acc.frozen(), guard_holding="cpu")
    values.update(kw)
    return Snapshot(**values)  # type: ignore[arg-type]


#: The label a single-pool scrape's worker, queue and scale-action series gain.
DEFAULT = (("pool", "default"),)


def labelled(*pairs: tuple[str, str]) -> tuple[tuple[str, str], ...]:
    """A sample's labels with the default pool's, sorted as `samples` keys them."""
    return tuple(sorted((*DEFAULT, *pairs)))


# -- the snapshot's pieces (pure) --------------------------------------------------------------------

def test_action_reason_is_the_policy_unless_a_bound_or_the_delayed_rule_decided() -> None:
    assert action_reason("target", proposed=3, wanted=3) == "target"
    assert action_reason("step", proposed=0, wanted=1) == Reason.MIN_PROCESSES
    assert action_reason("step", proposed=12, wanted=10) == Reason.MAX_PROCESSES
    assert action_reason("step", proposed=1, wanted=1, delayed_override=True) == Reason.DELAYED_MESSAGES


@given(st.lists(st.floats(min_value=-1, max_value=1000, allow_nan=False), max_size=50))
def test_histogram_counts_every_observation_in_its_inclusive_bucket(values: list[float]) -> None:
    acc = Accumulator()
    for v in values:
        acc.decision_took(v)
    h = acc.frozen().decision_duration
    assert h.count == len(values)
    assert h.sum == pytest.approx(sum(max(0.0, v) for v in values))
    cumulative = h.cumulative()
    assert cumulative[-1] == (math.inf, len(values))
    for bound, n in cumulative:
        assert n == sum(1 for v in values if max(0.0, v) <= bound)


def test_frozen_counters_do_not_change_with_the_accumulator() -> None:
    acc = Accumulator()
    before = acc.frozen()
    acc.scale_action(Direction.UP, "step")
    acc.scale_action(Direction.DOWN, Reason.HOST_BUDGET, pool="io")
    acc.source_error(Source.SYSTEMD)
    assert before.scale_actions == () and dict(before.source_errors) == {"redis": 0, "systemd": 0, "internal": 0}
    assert dict(acc.frozen().source_errors) == {"redis": 0, "systemd": 1, "internal": 0}
    assert dict(acc.frozen().scale_actions) == {("default", "up", "step"): 1, ("io", "down", "host_budget"): 1}


# -- the collector over hand-built snapshots ----------------------------------------------------------

def test_every_figure_of_a_snapshot_is_exported_under_its_documented_name() -> None:
    got = samples(snapshot(default_pool(schedule_floor=3, forecast=ForecastReport(
        Mode.SHADOW, True, "", 0.125, 0.25, 60.0, 4, 4, 1e9))))
    assert got[("dqagent_build_info", (("policy", "step"), ("version", "9.9")))] == 1
    assert got[("dqagent_pool_info", (("policy", "step"), ("pool", "default")))] == 1
    assert got[("dqagent_pool_priority", DEFAULT)] == 0
    assert got[("dqagent_redis_up", ())] == 1
    assert {dict(k[1])["bound"]: v for k, v in got.items() if k[0] == "dqagent_workers_limit"} == {"min": 1, "max": 8}
    assert {dict(k[1])["state"]: v for k, v in got.items() if k[0] == "dqagent_workers"} == {
        "running": 3, "starting": 1, "stopping": 2, "failed": 1, "desired": 4}
    queue_a = {dict(k[1])["state"]: v for k, v in got.items()
               if k[0] == "dqagent_queue_messages" and dict(k[1])["queue"] == "a"}
    assert queue_a == {"ready": 5, "in_flight": 4, "delayed": 2, "dead_lettered": 1, "orphaned": 0}
    # An empty queue has no age (not 0): only queue a is listed
    assert [k for k in got if k[0] == "dqagent_queue_oldest_message_age_seconds"] == [
        ("dqagent_queue_oldest_message_age_seconds", labelled(("queue", "a")))]
    assert got[("dqagent_queue_oldest_message_age_seconds", labelled(("queue", "a")))] == 12.5
    assert got[("dqagent_scale_actions_total", labelled(("direction", "up"), ("reason", "step")))] == 2
    assert got[("dqagent_scale_actions_total", labelled(("direction", "down"), ("reason", "min_processes")))] == 1
    assert got[("dqagent_scale_actions_total", labelled(("direction", "down"), ("reason", "step")))] == 0
    assert got[("dqagent_worker_start_failures_total", ())] == 2
    assert got[("dqagent_worker_oom_kills_total", ())] == 1
    # What the workers report: per pool totals only (no unit label), and the hung restarts
    assert {dict(k[1])["activity"]: v for k, v in got.items() if k[0] == "dqagent_workers_activity"} == {
        "busy": 1, "idle": 2, "unreported": 0}
    assert got[("dqagent_worker_hung_restarts_total", DEFAULT)] == 1
    # The guard: 1 for the resource it holds on, 0 for the others
    assert {dict(k[1])["resource"]: v for k, v in got.items() if k[0] == "dqagent_guard_holding"} == {
        "cpu": 1, "memory": 0, "memory_full": 0, "memory_available": 0}
    assert got[("dqagent_source_errors_total", (("source", "redis"),))] == 1
    assert got[("dqagent_source_errors_total", (("source", "systemd"),))] == 0
    assert got[("dqagent_last_decision_timestamp_seconds", ())] == 1e9 - 1
    assert got[("dqagent_broker_failure", labelled(("mode", "hold")))] == 0
    assert got[("dqagent_decision_duration_seconds_count", ())] == 2
    assert got[("dqagent_decision_duration_seconds_sum", ())] == pytest.approx(0.203)
    assert got[("dqagent_decision_duration_seconds_bucket", (("le", "0.005"),))] == 1
    assert got[("dqagent_decision_duration_seconds_bucket", (("le", "0.25"),))] == 2
    assert got[("dqagent_decision_duration_seconds_bucket", (("le", "+Inf"),))] == 2
    # PREDICTIVE: the recent and the day's error, the floor, trusted (with the mode), the period found
    assert {dict(k[1])["window"]: v for k, v in got.items() if k[0] == "dqagent_forecast_error_ratio"} == {
        "recent": 0.125, "day": 0.25}
    assert got[("dqagent_forecast_floor_workers", DEFAULT)] == 4
    assert got[("dqagent_forecast_trusted", labelled(("mode", "shadow")))] == 1
    assert got[("dqagent_forecast_period_seconds", DEFAULT)] == 60
    # Without HOST_MAX_PROCESSES: no host budget and no shares
    # Without HOST_MAX_PROCESSES nor a pause: no host budget, no shares, no pause's times; on Redis no consumers
    assert {k[0] for k in got} == METRIC_NAMES - {"dqagent_host_workers_limit", "dqagent_workers_share",
                                                  "dqagent_queue_consumers",
                                                  "dqagent_pause_start_timestamp_seconds",
                                                  "dqagent_pause_expiry_timestamp_seconds"}
    # Every worker and queue series, and every scale action, is the default pool's; no host-wide one has `pool`
    per_pool = {"dqagent_workers", "dqagent_workers_limit", "dqagent_queue_messages", "dqagent_pool_priority",
                "dqagent_queue_oldest_message_age_seconds", "dqagent_scale_actions_total", "dqagent_pool_info",
                "dqagent_schedule_workers", "dqagent_paused", "dqagent_broker_failure", "dqagent_workers_activity",
                "dqagent_worker_hung_restarts_total",
                "dqagent_forecast_error_ratio", "dqagent_forecast_floor_workers", "dqagent_forecast_trusted",
                "dqagent_forecast_period_seconds"}
    for name, labels in got:
        assert (dict(labels).get("pool") == "default") == (name in per_pool), (name, labels)


FORECAST_NAMES = {n for n in METRIC_NAMES if n.startswith("dqagent_forecast_")}


def test_each_pool_is_exported_under_its_name_with_the_host_budget_and_its_share() -> None:
    acc = Accumulator()
    acc.scale_action(Direction.UP, "target", pool="io")
    acc.scale_action(Direction.DOWN, Reason.HOST_BUDGET)
    io = PoolFigures("io", "target", 0, 6, WorkerCounts(running=2, starting=0, stopping=1, failed=0, desired=2),
                     (QueueDemand("slow", ready=40, outstanding=50, delayed=0, dead=0, orphaned=0, oldest_age_s=3.0,
                                  consumers=3),),
                     priority=50, share=2, schedule_ceiling=4,
                     pause=Pause("io", 0, "root", "deploy", 1e9, 1e9 + 600))
    got = samples(snapshot(pools=(default_pool(share=3, schedule_floor=2), io), host_max_processes=5,
                           counters=acc.frozen()))
    # SCHEDULE's bounds in force: only those a window sets
    assert {tuple(v for _, v in k[1]): n for k, n in got.items() if k[0] == "dqagent_schedule_workers"} == {
        ("floor", "default"): 2, ("ceiling", "io"): 4}
    assert got[("dqagent_paused", (("pool", "io"),))] == 1 and got[("dqagent_paused", (("pool", "default"),))] == 0
    assert got[("dqagent_pause_expiry_timestamp_seconds", (("pool", "io"),))] == 1e9 + 600
    assert got[("dqagent_host_workers_limit", ())] == 5
    assert {dict(k[1])["pool"]: v for k, v in got.items() if k[0] == "dqagent_workers_share"} == {"default": 3, "io": 2}
    assert {dict(k[1])["pool"]: v for k, v in got.items() if k[0] == "dqagent_pool_priority"} == {
        "default": 0, "io": 50}
    assert got[("dqagent_pool_info", (("policy", "target"), ("pool", "io")))] == 1
    assert got[("dqagent_build_info", (("policy", "step"), ("version", "9.9")))] == 1  # the default pool's
    assert got[("dqagent_workers_limit", (("bound", "max"), ("pool", "io")))] == 6
    assert got[("dqagent_workers", (("pool", "io"), ("state", "stopping")))] == 1
    assert got[("dqagent_workers", (("pool", "default"), ("state", "running")))] == 3
    assert got[("dqagent_queue_messages", (("pool", "io"), ("queue", "slow"), ("state", "in_flight")))] == 10
    assert got[("dqagent_queue_messages", (("pool", "default"), ("queue", "a"), ("state", "ready")))] == 5
    assert got[("dqagent_queue_oldest_message_age_seconds", (("pool", "io"), ("queue", "slow")))] == 3.0
    assert got[("dqagent_queue_consumers", (("pool", "io"), ("queue", "slow")))] == 3  # a RabbitMQ queue's
    # A queue is one pool's: never listed under another pool
    assert not [k for k in got if dict(k[1]).get("queue") == "slow" and dict(k[1])["pool"] != "io"]
    actions = {tuple(v for _, v in k[1]): n for k, n in got.items() if k[0] == "dqagent_scale_actions_total"}
    # (direction, pool, reason): what happened, and each pool's own policy from the start (at 0)
    assert actions == {("up", "io", "target"): 1, ("down", "io", "target"): 0, ("down", "default", "host_budget"): 1,
                       ("up", "default", "step"): 0, ("down", "default", "step"): 0}
    assert {k[0] for k in got} == METRIC_NAMES - FORECAST_NAMES  # (no pool here has PREDICTIVE on)


def test_a_pool_without_workers_or_queues_read_yet_has_only_its_settings() -> None:
    got = samples(snapshot(pools=(default_pool(), default_pool(name="io", workers=None, queues=()))))
    assert [k for k in got if dict(k[1]).get("pool") == "io" and k[0] in ("dqagent_workers", "dqagent_queue_messages")
            ] == []
    assert got[("dqagent_workers_limit", (("bound", "min"), ("pool", "io")))] == 1
    assert got[("dqagent_workers", (("pool", "default"), ("state", "running")))] == 3


def test_the_default_property_is_the_default_pools_figures_wherever_it_is() -> None:
    io = default_pool(name="io")
    assert snapshot(pools=(io, default_pool(priority=7))).default.priority == 7
    with pytest.raises(LookupError, match="default"):
        _ = snapshot(pools=(io,)).default


def test_the_guard_series_are_all_0_when_not_holding_and_absent_when_off() -> None:
    assert {v for k, v in samples(snapshot(guard_holding="")).items() if k[0] == "dqagent_guard_holding"} == {0}
    assert not [k for k in samples(snapshot(guard_holding=None)) if k[0] == "dqagent_guard_holding"]


def test_redis_down_exports_redis_up_0_and_no_queue_figures_but_keeps_the_workers() -> None:
    got = samples(snapshot(default_pool(queues=()), redis_up=False))
    assert got[("dqagent_redis_up", ())] == 0
    assert not [k for k in got if k[0].startswith("dqagent_queue_")]
    assert got[("dqagent_workers", labelled(("state", "running")))] == 3


def test_nothing_before_the_first_snapshot_and_no_workers_before_systemd_was_read() -> None:
    assert samples(None) == {}
    got = samples(snapshot(default_pool(workers=None), last_decision_s=None))
    assert not [k for k in got if k[0] in ("dqagent_workers", "dqagent_last_decision_timestamp_seconds")]


def test_the_collector_reads_only_the_latest_snapshot_at_each_scrape() -> None:
    current: list[Snapshot] = [snapshot()]
    registry = registry_for(lambda: current[0])
    assert b"dqagent_redis_up 1.0" in generate_latest(registry)
    current[0] = snapshot(redis_up=False)
    assert b"dqagent_redis_up 0.0" in generate_latest(registry)


# -- settings ---------------------------------------------------------------------------------------

@pytest.mark.parametrize(("raw", "parsed"), [
    ("127.0.0.1:9810", ("127.0.0.1", 9810)), ("[::1]:9810", ("::1", 9810)), ("0.0.0.0:9810", ("0.0.0.0", 9810)),
    ("[::]:1", ("::", 1)), ("localhost:65535", ("localhost", 65535)), (" ", None), ("", None)])
def test_metrics_address_accepts_host_port_and_bracketed_ipv6(raw: str, parsed: tuple[str, int] | None) -> None:
    assert parse_metrics_address(raw) == parsed
    assert parse_settings({"METRICS_ADDRESS": raw}).metrics_address == raw.strip()


@pytest.mark.parametrize("raw", ["9810", "::1:9810", "::1", "127.0.0.1", "127.0.0.1:0", "127.0.0.1:65536",
                                 "[127.0.0.1]:80", "[::1]9810", ":9810", "http://h:80", "a b:1", "h:-1", "h:8o"])
def test_a_bad_metrics_address_is_one_line_naming_the_setting_and_the_form(raw: str) -> None:
    with pytest.raises(ConfigError) as exc:
        parse_settings({"METRICS_ADDRESS": raw})
    message = str(exc.value)
    assert "\n" not in message and message.startswith("invalid METRICS_ADDRESS=")
    assert "host:port" in message and "[::1]:9810" in message


@pytest.mark.parametrize("raw", ["dqagent.prom", "/var/lib/x/dqagent.txt", "/var/lib/x/", "/x/.prom"])
def test_metrics_textfile_must_be_an_absolute_prom_path(raw: str) -> None:
    with pytest.raises(ConfigError, match=r"^invalid METRICS_TEXTFILE=.*absolute path ending in \.prom"):
        parse_settings({"METRICS_TEXTFILE": raw})
    assert parse_settings({"METRICS_TEXTFILE": "/var/lib/n/dq.prom"}).metrics_textfile == "/var/lib/n/dq.prom"


# -- the agent loop's snapshots (fakes for systemd and Redis) -----------------------------------------

SETTINGS = parse_settings({"GUARD": "off", "MIN_PROCESSES": "1", "MAX_PROCESSES": "3", "CHECK_INTERVAL": "1",
                           "PROCESS_STARTUP_DELAY": "0", "GRACEFUL_SHUTDOWN_TIMEOUT": "1"})


def agent_with(units: FakeUnits, probe: FakeDemandProbe, now: list[float] | None = None) -> Agent:
    clock = now or [1000.0]
    return Agent(SETTINGS, units, probe, RecordingNotifier(), StepPolicy.from_settings(SETTINGS),
                 clock=lambda: clock[0], wallclock=lambda: 1234.5)


def test_each_tick_publishes_what_it_read_decided_and_did() -> None:
    units, probe = FakeUnits(running=[1]), FakeDemandProbe()
    probe.set_queue("q", ready=50, outstanding=60, delayed=1)
    agent = agent_with(units, probe)

    async def scenario() -> None:
        assert agent.latest is None
        await agent.tick()  # 60 > 1 x 5: +1
        snap = agent.latest
        assert snap is not None and snap.redis_up and snap.last_decision_s == 1234.5
        assert [p.name for p in snap.pools] == ["default"] and snap.host_max_processes is None
        assert snap.default.workers == WorkerCounts(running=1, starting=1, stopping=0, failed=0, desired=2)
        assert [(q.queue, q.ready, q.in_flight, q.delayed) for q in snap.default.queues] == [("q", 50, 10, 1)]
        assert (snap.default.policy, snap.default.min_processes, snap.default.max_processes) == ("step", 1, 3)
        assert (snap.default.priority, snap.default.share) == (0, None)
        assert dict(snap.counters.scale_actions) == {("default", "up", "step"): 1}
        assert snap.counters.decision_duration.count == 1
        await agent.jobs.wait()
        probe.error = BrokerError("redis down")
        await agent.tick()
        down = agent.latest
        assert down is not None and not down.redis_up and down.default.queues == ()
        # systemd is read on a Redis failure too (BROKER_FAILURE decides through the step): @2 has started
        assert down.default.workers == WorkerCounts(running=2, starting=0, stopping=0, failed=0, desired=2)
        assert (down.default.broker_failure, down.default.broker_failure_active) == ("hold", True)
        assert dict(down.counters.source_errors) == {"redis": 1, "systemd": 0, "internal": 0}
        assert down.counters.decision_duration.count == 1  # no decision was made
        probe.error = None
        probe.set_queue("q", ready=0)
        await agent.tick()  # 0 < 2 x 2.5: -1, stops @2
        await agent.jobs.wait()
        final = agent.latest
        assert final is not None and final.redis_up
        assert dict(final.counters.scale_actions) == {("default", "up", "step"): 1, ("default", "down", "step"): 1}

    asyncio.run(scenario())


def test_failed_starts_are_counted_in_the_next_snapshot_and_actions_once_per_decision() -> None:
    units, probe = FakeUnits(running=[1], broken=[2]), FakeDemandProbe()
    probe.set_queue("q", ready=10_000)
    now = [1000.0]
    agent = agent_with(units, probe, now)

    async def scenario() -> None:
        await agent.tick()
        await agent.jobs.wait()  # the start check fails in the background, after this tick's snapshot
        assert agent.latest is not None and agent.latest.counters.start_failures == 0
        await agent.tick()  # held by the backoff; its snapshot counts the failure
        snap = agent.latest
        assert snap is not None and snap.counters.start_failures == 1
        probe.set_queue("q", ready=0)
        units.units.clear()  # the operator stopped everything: the step rule brings it back to MIN
        now[0] += 3600  # past the crash-loop backoff
        await agent.tick()
        await agent.jobs.wait()
        after = agent.latest
        assert after is not None  # one action per decision, not per unit; the held tick is none
        assert dict(after.counters.scale_actions) == {("default", "up", "step"): 2}

    asyncio.run(scenario())


# -- the exporter on this host (loopback, a temporary directory) --------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_exporter_serves_the_latest_snapshot_and_rebinds_on_a_new_address() -> None:
    current: list[Snapshot | None] = [None]
    port = free_port()
    exporter = Exporter(lambda: current[0], f"127.0.0.1:{port}", "")
    exporter.start()
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            assert r.status == 200 and r.read() == b""
        current[0] = snapshot()
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            assert "dqagent_workers{pool=\"default\",state=\"running\"} 3.0" in r.read().decode()
        # 50 scrapes arriving at once all fit the listen backlog (socketserver's default 5 made most wait for
        # SYN retransmits, 1 s and more): `ss` shows a listening socket's backlog as its Send-Q
        listening = subprocess.run(["ss", "-Hltn", f"sport = :{port}"], capture_output=True, text=True,
                                   check=True).stdout.split()
        assert listening[0] == "LISTEN" and int(listening[2]) == LISTEN_BACKLOG >= 50
        other = free_port()
        exporter.serve(f"[::1]:{other}" if socket.has_ipv6 and _ipv6_loopback() else f"127.0.0.1:{other}")
        with pytest.raises(OSError):
            urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5)
    finally:
        exporter.close()


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


def test_exporter_refuses_a_busy_port_as_transient_and_a_foreign_address_as_configuration() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(MetricsError) as exc:
            Exporter(lambda: None, f"127.0.0.1:{port}", "").start()
        assert exc.value.exit_code == EXIT_UNAVAILABLE and f"METRICS_ADDRESS=127.0.0.1:{port}" in str(exc.value)
    with pytest.raises(MetricsError) as exc:
        Exporter(lambda: None, "192.0.2.1:9810", "").start()  # TEST-NET-1: not an address of this host
    assert exc.value.exit_code == EXIT_CONFIG and "\n" not in str(exc.value)


def test_textfile_is_replaced_atomically_readable_by_node_exporter(tmp_path: Path) -> None:
    path = tmp_path / "dqagent.prom"
    current: list[Snapshot | None] = [snapshot()]
    exporter = Exporter(lambda: current[0], "", str(path))
    exporter.publish()
    first = path.read_text()
    families = {f.name for f in text_string_to_metric_families(first)}
    assert "dqagent_workers" in families and "dqagent_scale_actions" in families
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    current[0] = snapshot(redis_up=False)
    exporter.publish()
    assert "dqagent_redis_up 0.0" in path.read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dqagent.prom"]  # no temporary file left


def test_textfile_failure_is_logged_once_until_it_works_again(tmp_path: Path,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    missing = tmp_path / "nodir" / "dqagent.prom"
    exporter = Exporter(lambda: snapshot(), "", str(missing))
    for _ in range(3):
        exporter.publish()
    errors = events(caplog, "metrics_textfile_error")
    assert len(errors) == 1 and str(missing) in errors[0].getMessage()
    missing.parent.mkdir()
    exporter.publish()
    assert missing.exists()
    assert events(caplog, "metrics_textfile_ok")


def test_agent_exits_with_the_exporters_status_when_it_cannot_listen(caplog: pytest.LogCaptureFixture) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        s = parse_settings({"GUARD": "off", "METRICS_ADDRESS": f"127.0.0.1:{busy.getsockname()[1]}"})
        units = FakeUnits(running=[1])
        agent = Agent(s, units, FakeDemandProbe(), RecordingNotifier(), StepPolicy.from_settings(s))
        assert asyncio.run(agent.run()) == EXIT_UNAVAILABLE
    assert units.calls == []  # nothing started: the agent stopped before adopting
    assert events(caplog, "metrics_error")


# -- the Grafana dashboard ---------------------------------------------------------------------------

#: PromQL words that are not metric names (functions, aggregations, keywords, label names, units).
_PROMQL_WORDS = {"sum", "by", "rate", "increase", "max", "min", "avg", "time", "histogram_quantile", "le",
                 "irate", "without", "on", "ignoring", "group_left", "clamp_min", "label_replace", "count",
                 "or", "and", "unless", "bool", "offset", "deriv", "delta", "changes", "resets", "topk",
                 "state", "queue", "direction", "reason", "source", "bound", "version", "policy", "instance", "pool",
                 "job", "interval", "__rate_interval", "__interval", "__range", "m", "s", "h", "label_values"}


def dashboard_queries() -> list[str]:
    board = json.loads(DASHBOARD.read_text())
    exprs: list[str] = []

    def walk(node: object) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("expr"), str):
                exprs.append(node["expr"])
            # template variables: label_values(metric{...}, label)
            exprs.extend(v for k, v in node.items() if k in ("query", "definition") and isinstance(v, str)
                         and v.startswith("label_values("))
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(board)
    return exprs


def test_grafana_dashboard_queries_name_only_exported_metrics() -> None:
    queries = dashboard_queries()
    assert len(queries) >= 10 and any(q.startswith("label_values(") for q in queries)
    exported = set(METRIC_NAMES)
    used: set[str] = set()
    for q in queries:
        without_strings = re.sub(r'"[^"]*"', '""', q)
        without_ranges = re.sub(r"\[[^\]]*\]", "", without_strings)
        names = set(re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", without_ranges)) - _PROMQL_WORDS
        assert names and names <= exported, (q, names - exported)
        used |= names
    # The panels: running vs desired with MIN/MAX, queue by state, oldest age, scale actions, errors
    assert {"dqagent_workers", "dqagent_workers_limit", "dqagent_queue_messages",
            "dqagent_queue_oldest_message_age_seconds", "dqagent_scale_actions_total",
            "dqagent_source_errors_total"} <= used


def test_grafana_dashboard_filters_every_pool_labelled_query_by_the_pool_variable() -> None:
    per_pool = ("dqagent_workers", "dqagent_queue_", "dqagent_scale_actions_total", "dqagent_pool_info")
    pooled = [q for q in dashboard_queries() if any(re.search(rf"\b{name}", q) for name in per_pool)]
    assert len(pooled) >= 8
    for q in pooled:
        assert 'pool=~"$pool"' in q or q == 'label_values(dqagent_pool_info{instance=~"$instance"}, pool)', q
    # summed over pools per host, never the largest one pool's bound
    assert not [q for q in pooled if "max by (instance) (dqagent_workers_limit" in q]


def test_a_reload_listens_on_a_new_metrics_address_and_keeps_the_textfile_until_install(tmp_path: Path) -> None:
    from tests.unit.test_reload import Setup

    first, second = free_port(), free_port()
    t = Setup(tmp_path, running=[1], METRICS_ADDRESS=f"127.0.0.1:{first}")
    assert t.agent.start_exporter() is None
    try:
        asyncio.run(t.agent.tick())
        with urllib.request.urlopen(f"http://127.0.0.1:{first}/metrics", timeout=5) as r:
            assert b"dqagent_workers{pool=\"default\",state=\"running\"} 1.0" in r.read()
        t.write(METRICS_ADDRESS=f"127.0.0.1:{second}", METRICS_TEXTFILE=str(tmp_path / "x.prom"))
        t.reload()
        with urllib.request.urlopen(f"http://127.0.0.1:{second}/metrics", timeout=5) as r:
            assert b"dqagent_redis_up 1.0" in r.read()
        with pytest.raises(OSError):
            urllib.request.urlopen(f"http://127.0.0.1:{first}/metrics", timeout=5)
        assert t.agent.s.metrics_textfile == ""  # its directory is in the unit: waits for dqagent install
        t.write(METRICS_ADDRESS="")
        t.reload()
        with pytest.raises(OSError):
            urllib.request.urlopen(f"http://127.0.0.1:{second}/metrics", timeout=5)
    finally:
        assert t.agent.exporter is not None
        t.agent.exporter.close()


def _held(sock: socket.socket, wait_s: float) -> bool:
    """True if the server keeps `sock` open for `wait_s` (no EOF, no reset)."""
    sock.settimeout(wait_s)
    try:
        return sock.recv(1) != b""
    except TimeoutError:
        return True
    except ConnectionResetError:
        return False


def _connect(port: int, source: str = "127.0.0.1") -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=5, source_address=(source, 0))
    sock.sendall(b"GET /metrics HTTP/1.1\r\n")  # a request begun, never finished
    return sock


def _scrape(port: int, source: str = "127.0.0.1") -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5, source_address=(source, 0)) as s:
        s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def _scrape_or_nothing(port: int, source: str) -> bytes:
    try:
        return _scrape(port, source)
    except ConnectionResetError:
        return b""


def test_a_client_dribbling_its_request_is_closed_at_the_deadline_and_holds_up_no_scrape(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from dqagent.report import metrics_http

    assert 0 < metrics_http.REQUEST_DEADLINE_S <= 10
    monkeypatch.setattr(metrics_http, "REQUEST_DEADLINE_S", 1.0)  # the same mechanism, quicker
    port = free_port()
    exporter = Exporter(lambda: snapshot(), f"127.0.0.1:{port}", "")
    exporter.start()
    opened: list[socket.socket] = []
    try:
        # Given: a client that sends a header byte every 0.1 s (each read succeeds: no per-read timeout fires)
        # and one that sends nothing at all
        dribbler, idle = _connect(port), socket.create_connection(("127.0.0.1", port), timeout=5)
        opened += [dribbler, idle]
        began = time.monotonic()
        closed_after: float | None = None
        for byte in b"X-Slow: " + b"a" * 100:
            try:
                dribbler.sendall(bytes([byte]))
            except (BrokenPipeError, ConnectionResetError):
                closed_after = time.monotonic() - began
                break
            if not _held(dribbler, 0.1):
                closed_after = time.monotonic() - began
                break
            # Then: a scrape is answered at once meanwhile
            if byte == ord("a"):
                assert _scrape(port).startswith(b"HTTP/1.0 200 OK\r\n")
        # Then: both are closed at the deadline, counted from accept, however the bytes dribble
        assert closed_after is not None and 0.9 <= closed_after <= 2.0, closed_after
        assert not _held(idle, 1.0)
    finally:
        for s in opened:
            s.close()
        exporter.close()


def test_connections_beyond_the_caps_are_closed_at_once_and_other_addresses_still_scrape(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from dqagent.report import metrics_http

    assert 16 <= metrics_http.MAX_CONNECTIONS_PER_ADDRESS <= metrics_http.MAX_CONNECTIONS <= 512
    monkeypatch.setattr(metrics_http, "MAX_CONNECTIONS", 4)
    monkeypatch.setattr(metrics_http, "MAX_CONNECTIONS_PER_ADDRESS", 3)
    port = free_port()
    exporter = Exporter(lambda: snapshot(), f"127.0.0.1:{port}", "")
    exporter.start()
    held: list[socket.socket] = []
    try:
        # Given: 3 unfinished requests from 127.0.0.1, the per-address cap
        held += [_connect(port) for _ in range(3)]
        assert all(_held(s, 0.2) for s in held)
        # Then: a 4th from the same address is closed at once; a scrape from another address is answered
        with _connect(port) as extra:
            assert not _held(extra, 1.0)
        assert _scrape(port, "127.0.0.2").startswith(b"HTTP/1.0 200 OK\r\n")
        # Given: one more from 127.0.0.2: 4 open, the total cap. Then: a 5th, from a third address, is closed
        held.append(_connect(port, "127.0.0.2"))
        assert _held(held[-1], 0.2)
        with _connect(port, "127.0.0.3") as extra:
            assert not _held(extra, 1.0)
        # When: one held connection goes away, its slot is free again
        held.pop(0).close()
        deadline = time.monotonic() + 5  # once the server has seen that close
        while not (answer := _scrape_or_nothing(port, "127.0.0.3")) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert b"dqagent_workers{pool=\"default\",state=\"running\"} 3.0" in answer
        assert all(_held(s, 0.1) for s in held)  # the others were never disturbed
    finally:
        for s in held:
            s.close()
        exporter.close()


def test_the_server_answers_as_prometheus_clients_server_did() -> None:
    port = free_port()
    exporter = Exporter(lambda: snapshot(), f"127.0.0.1:{port}", "")
    exporter.start()
    url = f"http://127.0.0.1:{port}/metrics"
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers={
                "Accept": "application/openmetrics-text; version=1.0.0", "Accept-Encoding": "gzip"}), timeout=5) as r:
            assert r.headers["Content-Type"].startswith("application/openmetrics-text")
            assert r.headers["Content-Encoding"] == "gzip"
            assert gzip.decompress(r.read()).endswith(b"# EOF\n")
        with urllib.request.urlopen(url + "?name[]=dqagent_redis_up", timeout=5) as r:
            assert r.read() == generate_latest(registry_for(snapshot).restricted_registry(["dqagent_redis_up"]))
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(urllib.request.Request(url, data=b"x", method="POST"), timeout=5)
        err.value.close()
        assert err.value.code == 405
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:  # LF-only lines (printf | nc)
            s.sendall(b"GET /metrics HTTP/1.0\n\n")
            assert s.recv(100).startswith(b"HTTP/1.0 200 OK\r\n")
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(b"GET /metrics HTTP/1.0\r\n" + b"X-Big: " + b"a" * 5000 + b"\r\n" + b"X-Big: " + b"a" * 5000)
            assert s.recv(100).startswith(b"HTTP/1.0 431 ")
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(b"nonsense\r\n\r\n")
            assert s.recv(100).startswith(b"HTTP/1.0 400 ")
    finally:
        exporter.close()

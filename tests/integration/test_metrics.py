"""Prometheus metrics from the installed, hardened agent in the real-systemd bench.

One container and one agent for the module (the checks leave the pool back at MIN_PROCESSES):
`/bin/sleep infinity` workers, the step policy every second, `METRICS_ADDRESS` on loopback (the bench
shares the host's network namespace, so this process scrapes it with a real HTTP client) and
`METRICS_TEXTFILE` in a directory user dqagent may write. The scraped text is parsed with
prometheus_client's own parser and compared with `dqagent status --json` and with systemd.
"""

from __future__ import annotations

import json
import socket
import stat
import threading
import time
import urllib.request
from dataclasses import dataclass

import pytest
from prometheus_client.parser import text_string_to_metric_families

from dqagent import __version__
from dqagent.report.metrics_http import REQUEST_DEADLINE_S
from testbed.agent import QUEUE, dqagent, exposure, install, running_workers, set_backlog, worker_names
from testbed.nspawn import Container
from testbed.redis import RedisServer, free_port
from testbed.wait import wait_until

TEXTFILE_DIR = "/var/lib/dqagent-metrics"
TEXTFILE = f"{TEXTFILE_DIR}/dqagent.prom"
MAX = 4
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@dataclass
class Metered:
    c: Container
    redis: RedisServer
    url: str

    def scrape(self, timeout: float = 5) -> Samples:
        with urllib.request.urlopen(self.url, timeout=timeout) as r:
            assert r.status == 200
            return parse(r.read().decode())

    def at_min(self) -> None:
        set_backlog(self.redis, 0)
        wait_until("the pool back at MIN_PROCESSES", lambda: running_workers(self.c) == worker_names(1), timeout=30)
        # and the agent's last snapshot says so too (a check may not have run since systemd's stop ended)
        wait_until("the agent's snapshot at MIN_PROCESSES", lambda: (
            pooled(self.scrape(), "dqagent_workers", state="running") == 1
            and not pooled(self.scrape(), "dqagent_workers", state="stopping")), timeout=30)

    def scale_up_s(self) -> float:
        """Seconds from a backlog of 100 to MAX running workers, from MIN_PROCESSES.

        Counted, not named @1..@MAX: the module scales up again and again within a minute, and once a number was
        started 3 times in 60 s the agent starts a fresh one instead (@5, @6 ...: systemd's start limit,
        docs/operations.md); stops take the highest numbers first, so @1 is the one left at MIN_PROCESSES."""
        self.at_min()
        began = time.monotonic()
        set_backlog(self.redis, 100)
        wait_until("scaled to MAX", lambda: len(running_workers(self.c)) == MAX, timeout=60, interval=0.1)
        return time.monotonic() - began


def parse(text: str) -> Samples:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


def pooled(samples: Samples, name: str, **labels: str) -> float | None:
    """A worker, queue or scale-action series: the default pool's (a single-pool host has no other)."""
    return value(samples, name, pool="default", **labels)


@pytest.fixture(scope="module")
def metered(module_container: Container, redis: RedisServer) -> Metered:
    c, port = module_container, free_port()
    # Given: the agent installed with metrics on, a 3 s watchdog (pinged every 1.5 s), the
    # textfile's directory created after install (user dqagent exists then) and writable by it.
    install(c, redis, now=False, watchdog_s=3, MIN_PROCESSES=1, MAX_PROCESSES=MAX,
            METRICS_ADDRESS=f"127.0.0.1:{port}", METRICS_TEXTFILE=TEXTFILE)
    c.run(["install", "-d", "-o", "root", "-g", "dqagent", "-m", "0775", TEXTFILE_DIR])
    c.systemctl("start", "dqagent")
    m = Metered(c, redis, f"http://127.0.0.1:{port}/metrics")
    wait_until("first snapshot", lambda: value(m.scrape(), "dqagent_redis_up") == 1, timeout=30)
    return m


def test_scrape_while_scaling_agrees_with_status_and_systemd(metered: Metered) -> None:
    m, c = metered, metered.c
    m.at_min()
    seen_running: set[float] = set()

    def converged() -> bool:
        got = m.scrape()
        seen_running.add(pooled(got, "dqagent_workers", state="running") or 0)
        return pooled(got, "dqagent_workers", state="running") == MAX and len(running_workers(c)) == MAX

    # When: 100 ready messages (the step rule adds one worker per check while queue > workers x 5)
    set_backlog(m.redis, 100)
    wait_until("scaled to MAX in the scrapes and in systemd", converged, timeout=40, interval=0.2)
    assert len(seen_running) >= 2, seen_running  # scraped while it scaled, not only before and after

    # Then: the figures agree with `dqagent status --json` and with systemd
    report = json.loads(dqagent(c, "status", "--json").stdout)
    got = m.scrape()
    assert pooled(got, "dqagent_workers", state="running") == report["current_processes"] == MAX
    assert pooled(got, "dqagent_workers", state="desired") == MAX
    assert pooled(got, "dqagent_workers", state="starting") == pooled(got, "dqagent_workers", state="stopping") == 0
    assert pooled(got, "dqagent_workers", state="failed") == 0
    assert (pooled(got, "dqagent_workers_limit", bound="min"), pooled(got, "dqagent_workers_limit", bound="max")) \
        == (report["min_processes"], report["max_processes"]) == (1, MAX)
    for state in ("ready", "in_flight", "delayed", "dead_lettered", "orphaned"):
        assert pooled(got, "dqagent_queue_messages", queue=QUEUE, state=state) == report["queues"][QUEUE][state]
    assert pooled(got, "dqagent_queue_messages", queue=QUEUE, state="ready") == 100
    assert len(running_workers(c)) == MAX == len([p for p in report["process_list"] if p["status"] == "running"])
    assert value(got, "dqagent_redis_up") == 1
    assert value(got, "dqagent_build_info", version=__version__, policy="step") == 1
    assert pooled(got, "dqagent_pool_info", policy="step") == 1
    # One pool: every worker and queue series and every scale action carries pool="default", no other
    # series has a pool, and without HOST_MAX_PROCESSES there is neither a host budget nor a share
    per_pool = {"dqagent_workers", "dqagent_workers_limit", "dqagent_queue_messages", "dqagent_pool_info",
                "dqagent_queue_oldest_message_age_seconds", "dqagent_scale_actions_total", "dqagent_pool_priority",
                "dqagent_paused", "dqagent_broker_failure", "dqagent_workers_activity",
                "dqagent_worker_hung_restarts_total"}
    assert {name for name, labels in got if dict(labels).get("pool") == "default"} == per_pool
    assert {dict(labels).get("pool") for name, labels in got if name in per_pool} == {"default"}
    assert not [name for name, _ in got if name in ("dqagent_host_workers_limit", "dqagent_workers_share")]
    assert (pooled(got, "dqagent_scale_actions_total", direction="up", reason="step") or 0) >= MAX - 1
    assert (value(got, "dqagent_decision_duration_seconds_count") or 0) >= 1
    last = value(got, "dqagent_last_decision_timestamp_seconds")
    assert last is not None and abs(time.time() - last) < 10

    # The textfile holds the same metrics, readable by another user (node_exporter), replaced atomically
    path = c.root / TEXTFILE.lstrip("/")
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    from_file = parse(path.read_text())
    assert pooled(from_file, "dqagent_workers", state="running") == MAX
    assert {n for n, _ in from_file} == {n for n, _ in got}
    assert sorted(p.name for p in path.parent.iterdir()) == ["dqagent.prom"]  # no temporary file left

    # The unit stays hardened: the listener changes nothing systemd-analyze scores; the directory is
    # writable through ProtectSystem=strict only because install rendered it
    unit = (c.root / "etc/systemd/system/dqagent.service").read_text()
    assert f"ReadWritePaths=-{TEXTFILE_DIR}\n" in unit and "ProtectSystem=strict\n" in unit
    score = exposure(c, "dqagent.service")
    print(f"\nexposure with METRICS_ADDRESS and METRICS_TEXTFILE: {score}")
    assert score <= 2.0
    # `dqagent check` passes the directory, and fails it in one line once dqagent may not write it
    assert not [ln for ln in dqagent(c, "check", check=False).stdout.splitlines()
                if ln.startswith("FAIL") and TEXTFILE_DIR in ln]
    c.run(["chmod", "0755", TEXTFILE_DIR])
    try:
        result = dqagent(c, "check", check=False)
        (line,) = [ln for ln in result.stdout.splitlines() if ln.startswith("FAIL") and TEXTFILE_DIR in ln]
        assert result.returncode == 78 and "not writable (METRICS_TEXTFILE's directory) by user dqagent" in line
    finally:
        c.run(["chmod", "0775", TEXTFILE_DIR])
    m.at_min()


def test_fifty_concurrent_scrapes_and_page_loads_delay_no_scale_up_and_starve_no_watchdog(metered: Metered) -> None:
    m, c = metered, metered.c
    pid = c.unit_property("dqagent.service", "MainPID")
    restarts = c.unit_property("dqagent.service", "NRestarts")
    quiet = m.scale_up_s()
    # When: bursts of 50 scrapes and 50 status page loads at once (0.2 s apart, as 50 Prometheus servers and 50
    # open browsers would: each client a scrape, then the page or its /status.json) during a scale-up
    stop = threading.Event()
    burst = threading.Barrier(50)
    ok = [0] * 50
    latencies: list[float] = []
    errors: list[str] = []

    def scraper(i: int) -> None:
        while not stop.is_set():
            try:
                burst.wait(timeout=30)
                began = time.monotonic()
                with urllib.request.urlopen(m.url, timeout=20) as r:  # the text only: this process's CPU
                    assert r.status == 200 and b"dqagent_redis_up 1.0" in r.read()  # stays the agent's
                page, mark = ("status.json", b'"pools"') if ok[i] % 2 else ("", b'data-pool="default"')
                with urllib.request.urlopen(m.url.removesuffix("metrics") + page, timeout=20) as r:
                    assert r.status == 200 and mark in r.read()
                latencies.append(time.monotonic() - began)
                ok[i] += 1
            except threading.BrokenBarrierError:
                return
            except Exception as exc:
                errors.append(repr(exc))
            stop.wait(0.2)

    threads = [threading.Thread(target=scraper, args=(i,), daemon=True) for i in range(50)]
    m.at_min()
    for t in threads:
        t.start()
    try:
        loaded = m.scale_up_s()
    finally:
        stop.set()
        burst.abort()
        for t in threads:
            t.join(30)
    latencies.sort()
    print(f"\nscale-up 1 -> {MAX}: {quiet:.1f}s without scrapes, {loaded:.1f}s under bursts of 50 concurrent "
          f"scrapes + page loads ({sum(ok)} of each, {len(errors)} errors, scrape + page p50 "
          f"{latencies[len(latencies) // 2]:.2f}s max {latencies[-1]:.2f}s)")
    # Then: every scraper was answered, the scale-up took no longer beyond noise, no watchdog kill
    assert not errors, errors[:3]
    assert all(n >= 1 for n in ok)
    assert loaded <= 2 * quiet + 3, (quiet, loaded)
    assert c.unit_property("dqagent.service", "MainPID") == pid
    assert c.unit_property("dqagent.service", "NRestarts") == restarts
    m.at_min()


class SlowClients:
    """`n` connections to the metrics port, each sending its request one byte every 0.5 s, never ending it,
    spread over loopback addresses 127.0.0.2.. (below the per-address cap); one the server closes is
    opened again at once (as a slowloris does). Records how long each closed one was held open."""

    def __init__(self, port: int, n: int, addresses: int) -> None:
        self.port, self.n, self.addresses = port, n, addresses
        self.held_s: list[float] = []
        #: Set once all `n` are connected and have sent the start of their request.
        self.connected = threading.Event()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _open(self, i: int) -> tuple[socket.socket, float]:
        s = socket.create_connection(("127.0.0.1", self.port), timeout=5,
                                     source_address=(f"127.0.0.{2 + i % self.addresses}", 0))
        s.sendall(b"GET /metrics HTTP/1.1\r\nX-Slow: ")
        s.setblocking(False)
        return s, time.monotonic()

    def _run(self) -> None:
        conns = [self._open(i) for i in range(self.n)]
        self.connected.set()
        try:
            while not self.stop.wait(0.5):
                for i, (s, opened) in enumerate(conns):
                    try:
                        s.send(b"a")
                        closed = s.recv(1) == b""
                    except BlockingIOError:
                        closed = False  # nothing to read: still open
                    except OSError:
                        closed = True
                    if closed:
                        self.held_s.append(time.monotonic() - opened)
                        s.close()
                        conns[i] = self._open(i)
        finally:
            for s, _ in conns:
                s.close()

    def __enter__(self) -> SlowClients:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(30)


def test_two_hundred_slow_clients_delay_no_scale_up_nor_watchdog_nor_a_scrape(metered: Metered) -> None:
    m, c = metered, metered.c
    pid = c.unit_property("dqagent.service", "MainPID")
    restarts = c.unit_property("dqagent.service", "NRestarts")
    quiet = m.scale_up_s()
    port = int(m.url.split(":")[2].split("/")[0])
    scrape_s: list[float] = []
    m.at_min()
    # When: 200 clients dribble never-ending requests at the metrics port (4 addresses, 50 from each) while
    # the backlog calls for MAX workers, and a scrape comes every 0.5 s
    with SlowClients(port, 200, addresses=4) as slow:
        began = time.monotonic()
        wait_until("all 200 connected", slow.connected.is_set, timeout=10)
        loaded = m.scale_up_s()
        while time.monotonic() - began < REQUEST_DEADLINE_S + 3 or len(scrape_s) < 10:
            t0 = time.monotonic()
            assert value(m.scrape(timeout=REQUEST_DEADLINE_S), "dqagent_redis_up") == 1
            scrape_s.append(time.monotonic() - t0)
            time.sleep(0.5)
    held = sorted(slow.held_s)
    print(f"\nscale-up 1 -> {MAX}: {quiet:.1f}s without, {loaded:.1f}s with 200 slow clients ({len(held)} closed "
          f"by the server, held {min(held, default=0):.1f}..{max(held, default=0):.1f}s); "
          f"scrapes meanwhile: max {max(scrape_s):.2f}s")
    # Then: the slow clients were held (not refused) and closed at the request deadline, however they
    # dribbled; scrapes were answered at once meanwhile; the scale-up took no longer beyond noise, no
    # watchdog kill
    assert len(held) >= 150
    assert held[0] >= REQUEST_DEADLINE_S - 0.5 and held[-1] <= REQUEST_DEADLINE_S + 2.5, held
    assert max(scrape_s) < 1.0, scrape_s
    assert loaded <= 2 * quiet + 3, (quiet, loaded)
    assert c.unit_property("dqagent.service", "MainPID") == pid
    assert c.unit_property("dqagent.service", "NRestarts") == restarts
    m.at_min()


def test_a_scrape_while_redis_is_down_answers_redis_up_0(metered: Metered) -> None:
    m, c = metered, metered.c
    m.at_min()
    before = value(m.scrape(), "dqagent_source_errors_total", source="redis") or 0
    m.redis.stop()
    try:
        wait_until("dqagent_redis_up 0", lambda: value(m.scrape(), "dqagent_redis_up") == 0, timeout=30)
        got = m.scrape()
        assert (value(got, "dqagent_source_errors_total", source="redis") or 0) > before
        assert not [k for k in got if k[0] == "dqagent_queue_messages"]  # unknown, not stale
        assert pooled(got, "dqagent_workers", state="running") == 1  # kept: the agent never scales on unknown data
        assert running_workers(c) == worker_names(1)
        # the status page and its document are served meanwhile, and say that Redis is down
        base = m.url.removesuffix("metrics")
        with urllib.request.urlopen(base + "status.json", timeout=5) as r:
            doc = json.loads(r.read())
        assert doc["redis_error"] and doc["queues"] == {} and doc["current_processes"] == 1
        with urllib.request.urlopen(base, timeout=5) as r:
            assert b'data-field="redis_error">Redis unavailable' in r.read()
    finally:
        m.redis.restart()
    wait_until("dqagent_redis_up 1 again", lambda: value(m.scrape(), "dqagent_redis_up") == 1, timeout=60)

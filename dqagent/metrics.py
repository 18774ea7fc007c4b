"""Prometheus metrics (opt-in): a collector over the agent's latest snapshot, `/metrics`, and a textfile.

`SnapshotCollector.collect()` only reads the `dqagent.snapshot.Snapshot` the loop published last (no
Redis or D-Bus call per scrape). It is registered in a `CollectorRegistry` of its own, never in
prometheus_client's global one (whose process and platform collectors would read /proc per scrape and
tie the output to the import). `Exporter` owns the effects: `METRICS_ADDRESS` is served by
prometheus_client's WSGI app from an asyncio loop in a daemon thread of its own (`_Server`), with a cap
on open connections and a deadline per request, so neither fifty scrapes at once nor hundreds of
clients dribbling bytes run on the agent's loop or hold it, a tick or the watchdog; and
`METRICS_TEXTFILE` is rewritten after each tick for node_exporter's textfile collector.

Imported only when a metrics setting is set: prometheus_client costs a few hundred ms of import time.
Names follow Prometheus' conventions (`dqagent_` prefix, base units, `_total` counters, `_info`); the
full list, with labels, is `METRIC_NAMES` (the Grafana dashboard's test checks its queries against it).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import http.client
import io
import logging
import os
import socket
import threading
import urllib.parse
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.exposition import generate_latest, make_wsgi_app
from prometheus_client.registry import Collector, CollectorRegistry

from dqagent.config import parse_metrics_address
from dqagent.errors import EXIT_CONFIG, EXIT_UNAVAILABLE, DqAgentError
from dqagent.logs import event
from dqagent.snapshot import Direction, Snapshot

log = logging.getLogger(__name__)

#: Every series name the agent exports (histogram and info families by their exposed names).
METRIC_NAMES = frozenset({
    "dqagent_workers", "dqagent_workers_limit", "dqagent_queue_messages",
    "dqagent_queue_oldest_message_age_seconds", "dqagent_scale_actions_total",
    "dqagent_worker_start_failures_total", "dqagent_decision_duration_seconds_bucket",
    "dqagent_decision_duration_seconds_sum", "dqagent_decision_duration_seconds_count",
    "dqagent_source_errors_total", "dqagent_redis_up", "dqagent_last_decision_timestamp_seconds",
    "dqagent_build_info", "dqagent_worker_oom_kills_total", "dqagent_guard_holding",
    "dqagent_broker_records_rejected_total",
})
#: The guard's resources (dqagent.guard.Verdict.resource), each a series of `dqagent_guard_holding`.
GUARD_RESOURCES = ("cpu", "memory", "memory_full", "memory_available")
#: Mode of the textfile: node_exporter runs as another user (the unit's UMask=0077 would hide it).
TEXTFILE_MODE = 0o644
#: Listen backlog. prometheus_client's `start_http_server` keeps socketserver's 5: of 50 scrapes
#: arriving at once most SYNs were dropped and retried after 1, 3, 7 s (measured: p50 1.2 s, max 10 s).
LISTEN_BACKLOG = 128
#: Connections open at once on the metrics server (reading a request or writing its answer): one more
#: is closed at once, unanswered. Each costs a file descriptor and a coroutine, not a thread, far below
#: the unit's soft LimitNOFILE of 1024; a Prometheus server holds one while it scrapes.
MAX_CONNECTIONS = 256
#: Connections open at once from one client address, so that one host cannot take every slot.
MAX_CONNECTIONS_PER_ADDRESS = 64
#: Seconds from a connection's accept to its answer handed to the kernel, however the request's bytes
#: dribble in or the answer's are read out; then it is closed, answered or not (a scrape takes ms).
REQUEST_DEADLINE_S = 5.0
#: Bytes of request line and headers (a scrape sends about 300): beyond them, 431 and closed.
MAX_REQUEST_BYTES = 8192


def families(snap: Snapshot) -> Iterator[Metric]:
    """The metric families of one snapshot (pure: what a scrape and the textfile show)."""
    info = InfoMetricFamily("dqagent_build", "dqagent's version and scaling policy", labels=["version", "policy"])
    info.add_metric([snap.version, snap.policy], {})
    yield info
    yield GaugeMetricFamily("dqagent_redis_up", "1 if the last check read the broker, 0 if Redis failed",
                            value=1 if snap.redis_up else 0)
    limits = GaugeMetricFamily("dqagent_workers_limit", "MIN_PROCESSES and MAX_PROCESSES", labels=["bound"])
    limits.add_metric(["min"], snap.min_processes)
    limits.add_metric(["max"], snap.max_processes)
    yield limits
    if snap.workers is not None:
        w = snap.workers
        workers = GaugeMetricFamily("dqagent_workers", "Worker units by state as the agent counts them "
                                    "(failed includes auto-restart, also counted as starting), and desired",
                                    labels=["state"])
        for state, n in (("running", w.running), ("starting", w.starting), ("stopping", w.stopping),
                         ("failed", w.failed), ("desired", w.desired)):
            workers.add_metric([state], n)
        yield workers
    if snap.queues:
        messages = GaugeMetricFamily("dqagent_queue_messages", "Messages in the Dramatiq broker by queue and state",
                                     labels=["queue", "state"])
        for q in snap.queues:
            for state, n in (("ready", q.ready), ("in_flight", q.in_flight), ("delayed", q.delayed),
                             ("dead_lettered", q.dead), ("orphaned", q.orphaned)):
                messages.add_metric([q.queue, state], n)
        yield messages
        ages = GaugeMetricFamily("dqagent_queue_oldest_message_age_seconds",
                                 "Age of the oldest ready message; absent for an empty queue", labels=["queue"])
        for q in snap.queues:
            if q.oldest_age_s is not None:
                ages.add_metric([q.queue], q.oldest_age_s)
        yield ages
    if snap.last_decision_s is not None:
        yield GaugeMetricFamily("dqagent_last_decision_timestamp_seconds",
                                "Unix time of the last completed decision", value=snap.last_decision_s)
    c = snap.counters
    actions = CounterMetricFamily("dqagent_scale_actions", "Scale actions issued, by direction and reason "
                                  "(the policy's name, startup, min_processes, max_processes, delayed_messages)",
                                  labels=["direction", "reason"])
    seen = dict(c.scale_actions)
    for d in Direction:  # the current policy's series exist from the start, so rate() sees the first action
        seen.setdefault((d.value, snap.policy), 0)
    for (direction, reason), n in sorted(seen.items()):
        actions.add_metric([direction, reason], n)
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


class _Server:
    """`/metrics` over HTTP/1.0, one request per connection, from an asyncio loop in a daemon thread of its own.

    Not prometheus_client's threading server: it spends a thread per connection, without limit, and its
    timeout applies to each read, so clients dribbling header bytes held a thread each for as long as
    they liked. Here a connection is a coroutine on this thread's loop; at most `MAX_CONNECTIONS` are
    open (`MAX_CONNECTIONS_PER_ADDRESS` from one client address), one more is closed at once, unanswered;
    each is closed `REQUEST_DEADLINE_S` after its accept, answered or not. The answer is
    prometheus_client's WSGI app's (text or OpenMetrics by Accept, gzip, `name[]`), called inline: it
    formats the last snapshot in about a millisecond, so this thread holds the GIL only in short
    slices (a header line, one answer) and the agent's loop, on the main thread, never waits for it.
    """

    def __init__(self, sock: socket.socket, app: Callable[..., Iterable[bytes]]) -> None:
        self._sock = sock
        self._app = app
        self._loop = asyncio.new_event_loop()
        self._stop = asyncio.Event()
        self._open: dict[asyncio.StreamWriter, str] = {}
        self._per_address: Counter[str] = Counter()
        self._tasks: set[asyncio.Task[None]] = set()
        self._last_error = ""
        self.thread = threading.Thread(target=self._run, name="dqagent-metrics", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def close(self) -> None:
        """Stop listening and close every open connection; returns once the thread has ended (milliseconds)."""
        with contextlib.suppress(RuntimeError):  # the loop is closed already: the thread has ended
            self._loop.call_soon_threadsafe(self._stop.set)
        if self.thread.is_alive():
            self.thread.join(timeout=5)
        else:
            self._sock.close()  # never started: the socket is still ours

    def _run(self) -> None:
        try:
            self._loop.run_until_complete(self._serve())
        finally:
            self._loop.close()

    async def _serve(self) -> None:
        server = await asyncio.start_server(self._connection, sock=self._sock, backlog=LISTEN_BACKLOG,
                                            limit=MAX_REQUEST_BYTES)
        async with server:
            await self._stop.wait()
        for writer in list(self._open):
            writer.transport.abort()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        address = str(peer[0]) if peer else ""
        if len(self._open) >= MAX_CONNECTIONS or self._per_address[address] >= MAX_CONNECTIONS_PER_ADDRESS:
            writer.transport.abort()  # over a cap: closed at once, unanswered; costs no more than the accept
            return
        task = asyncio.current_task()
        assert task is not None
        self._open[writer] = address
        self._per_address[address] += 1
        self._tasks.add(task)
        try:
            async with asyncio.timeout(REQUEST_DEADLINE_S):
                await self._exchange(reader, writer)
        except (TimeoutError, OSError, EOFError):
            pass  # the deadline, or the client went away: just close
        finally:
            writer.transport.abort()  # a no-op after a completed answer's close()
            del self._open[writer]
            self._per_address[address] -= 1
            if not self._per_address[address]:
                del self._per_address[address]
            self._tasks.discard(task)

    async def _exchange(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Read one request's line and headers (no body: GET), answer, close. Raises on EOF and errors."""
        head = b""
        while (end := _end_of_head(head)) is None and len(head) <= MAX_REQUEST_BYTES:
            chunk = await reader.read(MAX_REQUEST_BYTES + 1 - len(head))
            if not chunk:
                raise EOFError("client closed before the end of its headers")
            head += chunk
        if end is None:
            answer = _response("431 Request Header Fields Too Large", [], b"")
        else:
            answer = self._answer(head[:end].split(b"\n"))
        writer.write(answer)
        writer.transport.set_write_buffer_limits(high=0)
        await writer.drain()  # until the whole answer is with the kernel (or the deadline)
        writer.close()

    def _answer(self, lines: list[bytes]) -> bytes:
        """The response to a request's line and header lines: the WSGI app's, or 400/500."""
        parts = lines[0].decode("latin-1").split()
        if len(parts) != 3 or not parts[2].startswith("HTTP/"):
            return _response("400 Bad Request", [], b"")
        method, target, _ = parts
        try:
            fields = http.client.parse_headers(io.BytesIO(b"".join(ln.rstrip(b"\r") + b"\r\n" for ln in lines[1:])
                                                          + b"\r\n"))
        except http.client.HTTPException:
            return _response("400 Bad Request", [], b"")
        url = urllib.parse.urlsplit(target)
        environ: dict[str, Any] = {
            "REQUEST_METHOD": method, "PATH_INFO": urllib.parse.unquote(url.path), "QUERY_STRING": url.query,
            "SERVER_PROTOCOL": "HTTP/1.0", "wsgi.url_scheme": "http", "wsgi.input": io.BytesIO(),
        }
        for name, value in fields.items():
            environ["HTTP_" + name.upper().replace("-", "_")] = value
        started: list[tuple[str, list[tuple[str, str]]]] = []

        def start_response(status: str, headers: list[tuple[str, str]], exc_info: object = None) -> None:
            started.append((status, headers))

        try:
            body = b"".join(self._app(environ, start_response))
        except Exception as exc:  # a bug in formatting: answered 500, logged when it differs from the last
            message = f"{type(exc).__name__}: {exc}"
            if message != self._last_error:
                log.error("a metrics scrape failed: %s", message, exc_info=True,
                          extra=event("metrics_scrape_error", error=message))
            self._last_error = message
            return _response("500 Internal Server Error", [], b"")
        status, headers = started[-1]
        return _response(status, headers, body)


def _end_of_head(data: bytes) -> int | None:
    """Where the request line and headers end (before the blank line, CRLF or bare LF), None before."""
    ends = [i for i in (data.find(b"\n\r\n"), data.find(b"\n\n")) if i >= 0]
    return min(ends) if ends else None


def _response(status: str, headers: list[tuple[str, str]], body: bytes) -> bytes:
    head = [f"HTTP/1.0 {status}", *(f"{k}: {v}" for k, v in headers),
            f"Content-Length: {len(body)}", "Connection: close", "", ""]
    return "\r\n".join(head).encode("latin-1") + body


def start_server(host: str, port: int, registry: CollectorRegistry) -> _Server:
    """Serve `registry` on host:port (`_Server`), listening before this returns.

    The address family is picked by `getaddrinfo` as prometheus_client's `start_http_server` does, with
    `SO_REUSEADDR` as socketserver sets it. Raises `OSError` (incl. `socket.gaierror`) when it cannot listen.
    """
    family, _, _, _, sockaddr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(sockaddr)
        sock.listen(LISTEN_BACKLOG)
    except BaseException:
        sock.close()
        raise
    server = _Server(sock, make_wsgi_app(registry))
    server.start()
    return server


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

    def __init__(self, latest: Callable[[], Snapshot | None], address: str, textfile: str) -> None:
        self.registry = registry_for(latest)
        self.address = ""
        self.textfile = Path(textfile) if textfile else None
        self._server: _Server | None = None
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
            self._server = start_server(host, port, self.registry)
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

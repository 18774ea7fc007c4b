"""The `/metrics` HTTP server: prometheus_client's WSGI app served from an asyncio loop in a thread of its own
(with the status page beside it, `dqagent.report.pageapp`, when the agent gives one).

Not prometheus_client's threading server: it spends a thread per connection, without limit, and its
timeout applies to each read, so clients dribbling header bytes held a thread each for as long as they
liked. Here a connection is a coroutine; the caps and the deadline are the constants below
(docs/metrics.md, "Limits").
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import io
import logging
import socket
import threading
import urllib.parse
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client.exposition import make_wsgi_app
from prometheus_client.registry import CollectorRegistry

from dqagent.report.logs import event
from dqagent.report.page import PageData
from dqagent.report.pageapp import page_app

log = logging.getLogger(__name__)

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



class Server:
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


def start_server(host: str, port: int, registry: CollectorRegistry,
                 page: Callable[[], PageData | None] | None = None) -> Server:
    """Serve `registry` on host:port (`Server`), listening before this returns; with `page`, the status page
    beside /metrics (`dqagent.report.pageapp`).

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
    metrics = make_wsgi_app(registry)
    server = Server(sock, metrics if page is None else page_app(metrics, page))
    server.start()
    return server

"""What the agent's HTTP server answers (a WSGI app, run by `dqagent.report.metrics_http`): `/metrics` as before,
and the read-only status page: `/` (HTML), `/fragment.html` (its live part, for /page.js), `/status.json` (the
status document), `/page.js` and `/page.css` (shipped in the package: nothing comes from elsewhere).

Read-only: GET and HEAD only (anything else: 405), no query changes anything, no cookies. Every page answer
carries a strict Content-Security-Policy (scripts and styles from this server only: no inline script, no eval,
no frames, no forms), `nosniff` and `no-store`. Other paths: 404.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from importlib import resources
from typing import Any

from dqagent.report.page import PageData, fragment, full_page

WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]

CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
       "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
HEADERS = [("Content-Security-Policy", CSP), ("X-Content-Type-Options", "nosniff"), ("Cache-Control", "no-store"),
           ("Referrer-Policy", "no-referrer"), ("X-Frame-Options", "DENY")]
#: The files under dqagent/report/assets the page loads, with their types.
ASSETS = {"/page.js": "text/javascript; charset=utf-8", "/page.css": "text/css; charset=utf-8"}


def _asset(path: str) -> bytes:
    return resources.files("dqagent.report").joinpath("assets", path.lstrip("/")).read_bytes()


def _json(data: PageData | None) -> str:
    return json.dumps(data.document if data is not None else None, indent=2)


def page_app(metrics: WsgiApp, source: Callable[[], PageData | None]) -> WsgiApp:
    """`metrics` on /metrics, the status page from `source()` (read per request) on the other paths."""
    assets = {path: (_asset(path), kind) for path, kind in ASSETS.items()}  # read once, at start
    renders = {"/": full_page, "/index.html": full_page, "/fragment.html": fragment, "/status.json": _json}
    rendered: dict[str, bytes] = {}
    rendered_from: list[PageData | None] = []

    def render(path: str) -> bytes:
        """`path`'s body for the current data: rendered once per `PageData` object (one per snapshot), so
        that a crowd of browsers costs this thread a dictionary read each, not a page build holding the GIL
        the agent's loop needs. Only this server's one thread calls it: no lock."""
        data = source()
        if not rendered_from or rendered_from[0] is not data:
            rendered.clear()
            rendered_from[:] = [data]
        if path not in rendered:
            rendered[path] = renders[path](data).encode()
        return rendered[path]

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        method, path = environ.get("REQUEST_METHOD", "GET"), environ.get("PATH_INFO", "/")
        if method not in ("GET", "HEAD"):
            start_response("405 Method Not Allowed", [("Allow", "GET, HEAD"), *HEADERS])
            return [b""]
        if path == "/metrics":
            return metrics(environ, start_response)
        if path in assets:
            body, kind = assets[path]
        elif path in renders:
            body = render(path)
            kind = "application/json" if path == "/status.json" else "text/html; charset=utf-8"
        else:
            start_response("404 Not Found", [("Content-Type", "text/plain; charset=utf-8"), *HEADERS])
            return [b"" if method == "HEAD" else b"not found: the status page is /, the metrics /metrics\n"]
        start_response("200 OK", [("Content-Type", kind), *HEADERS])
        return [b"" if method == "HEAD" else body]

    return app

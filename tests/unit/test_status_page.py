"""The status page's parts without a browser: the history's bounds, the agent's document (same builder as
`dqagent status --json`), escaping of outside text, and what the HTTP app answers. The browser reads the real
agent's page in tests/integration/test_status_page.py."""

from __future__ import annotations

import io
import itertools
import json
import sys
from dataclasses import replace
from html.parser import HTMLParser
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dqagent.agent.statusview import WITHHELD, page_source, public_document, view_of
from dqagent.core.demand import QueueDemand
from dqagent.core.history import MAX_POINTS, STEP_S, WINDOW_S, DecisionNote, History, Point
from dqagent.core.pause import Pause
from dqagent.core.snapshot import Counters, PoolFigures, Snapshot, WorkerCounts
from dqagent.core.units import ActiveState, UnitState
from dqagent.core.untrusted import RecordKind, Rejection
from dqagent.report import pageapp
from dqagent.report.page import fragment, full_page
from dqagent.report.pageapp import CSP, page_app
from dqagent.report.statusdoc import PoolView, StatusView, document
from dqagent.settings.config import parse_settings
from dqagent.settings.parsers import DEFAULT_POOL
from dqagent.settings.pools import Pool

HOSTILE = "<script>alert(1)</script>"
#: The elements the live fragment is made of.
SAFE_TAGS = {"main", "h1", "h2", "span", "time", "p", "section", "dl", "div", "dt", "dd", "figure", "svg", "title",
             "rect", "line", "text", "polyline", "figcaption", "table", "caption", "thead", "tbody", "tr", "th", "td"}
NOW = 1_800_000_000.0


def unit(n: int, pid: int) -> UnitState:
    return UnitState(f"dramatiq-worker@{n}.service", n, ActiveState.ACTIVE, "running", pid, int((NOW - 60) * 1e6),
                     -1, "success", False)


def snapshot(redis_up: bool = True, pause: Pause | None = None, points: tuple[Point, ...] = ()) -> Snapshot:
    queues = (QueueDemand("default", ready=12, outstanding=15, delayed=1, dead=2, orphaned=0, oldest_age_s=3.5),)
    pool = PoolFigures(DEFAULT_POOL, "step", 1, 4, WorkerCounts(2, 0, 0, 0, 2), queues, units=(unit(1, 101),
                                                                                              unit(2, 102)),
                       pause=pause, history=points)
    return Snapshot("0", NOW, redis_up, (pool,), NOW, Counters(), status_text=f"2 running; {HOSTILE}",
                    broker_error="" if redis_up else "Redis at redis://127.0.0.1:1/0: connection refused",
                    rejected=(Rejection(RecordKind.HEARTBEAT, f"dramatiq:__heartbeats__ {HOSTILE}", "not an id"),),
                    decisions=(DecisionNote(NOW - 5, DEFAULT_POOL, 1, 2, f"queue 15 > 10 {HOSTILE}"),))


SETTINGS = parse_settings({"DRAMATIQ_COMMAND": "/usr/bin/python3 -m dramatiq app -p 2 -t 4"})


def test_the_agents_document_is_the_cli_document_of_the_same_observation() -> None:
    # Given what the agent's snapshot holds, and the same observation as `dqagent status` reads it
    snap = snapshot()
    cli = document(StatusView(SETTINGS, None, (PoolView(Pool(DEFAULT_POOL, SETTINGS), snap.pools[0].queues,
                                                        snap.pools[0].units),), NOW, agent_state="active",
                              agent_status_text=snap.status_text, rejected=snap.rejected))
    agent = document(view_of(snap, SETTINGS, ()))
    assert agent == cli
    assert agent["current_processes"] == 2 and agent["queue_length"] == 15  # outstanding (QUEUE_METRIC)
    assert [w["pid"] for w in agent["process_list"]] == [101, 102]
    assert agent["queues"]["default"] == {"ready": 12, "in_flight": 3, "delayed": 1, "dead_lettered": 2,
                                          "orphaned": 0, "oldest_age_s": 3.5}


def test_served_document_withholds_locations_and_the_command() -> None:
    doc = public_document(snapshot(), SETTINGS, ())
    assert all(doc[k] is None for k in WITHHELD)
    assert all(part[k] is None for part in doc["pools"].values() for k in WITHHELD if k in part)
    assert "redis://" not in json.dumps(doc) and "dramatiq app" not in json.dumps(doc)


def test_redis_down_shows_the_error_and_no_queues() -> None:
    doc = public_document(snapshot(redis_up=False), SETTINGS, ())
    assert doc["redis_error"] and "connection refused" in doc["redis_error"]
    assert doc["queue_length"] is None and doc["queues"] == {} and doc["current_processes"] == 2
    page = fragment(page_source(lambda: snapshot(redis_up=False), lambda: SETTINGS, lambda: ())())
    assert 'data-field="redis_error">Redis unavailable' in page


class Texts(HTMLParser):
    """Every element and text node of a page, as a browser's parser sees them."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def test_outside_text_is_shown_as_text_never_as_markup() -> None:
    pause = Pause(DEFAULT_POOL, 0, "root", HOSTILE, NOW - 10, None)
    data = page_source(lambda: snapshot(pause=pause), lambda: SETTINGS, lambda: ())()
    parsed = Texts()
    parsed.feed(full_page(data))
    assert parsed.tags.count("script") == 1  # /page.js only
    shown = "".join(parsed.text)
    assert shown.count(HOSTILE) >= 4  # STATUS=, the skipped heartbeat, the decision's reason, the pause's reason


@given(st.text(max_size=40))
def test_any_pool_name_or_reason_is_escaped(text: str) -> None:
    snap = replace(snapshot(), decisions=(DecisionNote(NOW, text, 1, 2, text),))
    parsed = Texts()
    parsed.feed(fragment(page_source(lambda: snap, lambda: SETTINGS, lambda: ())()))
    assert "script" not in parsed.tags and set(parsed.tags) <= SAFE_TAGS
    assert text in "".join(parsed.text)


def call(app: Any, method: str, path: str) -> tuple[str, dict[str, str], bytes]:
    got: list[Any] = []
    body = b"".join(app({"REQUEST_METHOD": method, "PATH_INFO": path, "wsgi.input": io.BytesIO()},
                        lambda status, headers, exc=None: got.append((status, dict(headers)))))
    return got[0][0], got[0][1], body


def metrics_app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"dqagent_up 1\n"]


def test_the_app_is_read_only_and_strict() -> None:
    app = page_app(metrics_app, page_source(snapshot, lambda: SETTINGS, lambda: ()))
    for method in ("POST", "PUT", "DELETE", "PATCH"):
        status, headers, _ = call(app, method, "/")
        assert status.startswith("405") and headers["Allow"] == "GET, HEAD"
    status, headers, body = call(app, "GET", "/")
    assert status.startswith("200") and headers["Content-Security-Policy"] == CSP
    assert "'unsafe-inline'" not in CSP and "'unsafe-eval'" not in CSP and "form-action 'none'" in CSP
    assert b"<form" not in body and b"<button" not in body and b"<input" not in body
    assert call(app, "GET", "/metrics")[2] == b"dqagent_up 1\n"
    status, headers, body = call(app, "GET", "/status.json")
    assert headers["Content-Type"] == "application/json"
    assert json.loads(body) == public_document(snapshot(), SETTINGS, ())
    assert call(app, "GET", "/page.js")[1]["Content-Type"].startswith("text/javascript")
    assert call(app, "HEAD", "/")[2] == b""
    assert call(app, "GET", "/nothing")[0].startswith("404")


def test_before_the_first_check_the_page_says_so() -> None:
    app = page_app(metrics_app, page_source(lambda: None, lambda: SETTINGS, lambda: ()))
    assert b"No check has completed yet" in call(app, "GET", "/")[2]
    assert call(app, "GET", "/status.json")[2] == b"null"


def test_history_is_bounded_in_time_and_points() -> None:
    h = History()
    for i in range(10_000):  # a check every second for almost three hours
        h.add(DEFAULT_POOL, Point(NOW + i, i % 5, 1000 + i, 3))
    pts = h.points(DEFAULT_POOL)
    assert len(pts) <= MAX_POINTS + 1
    assert pts[-1].at_s == NOW + 9_999  # the newest point is always there
    assert pts[-1].at_s - pts[0].at_s <= WINDOW_S
    assert all(b.at_s - a.at_s >= STEP_S for a, b in itertools.pairwise(pts[:-1]))
    size = sum(sys.getsizeof(p) + sys.getsizeof(p.at_s) + sys.getsizeof(p.outstanding) for p in pts)
    assert size < 100 * 1024, size  # stated in docs/status-page.md


def test_decisions_are_bounded_and_kept_in_order() -> None:
    h = History(max_decisions=3)
    for i in range(5):
        h.decided(DecisionNote(NOW + i, DEFAULT_POOL, i, i + 1, f"r{i}"))
    assert [d.reason for d in h.decisions()] == ["r2", "r3", "r4"]


def test_a_repeated_decision_is_kept_once() -> None:
    h = History()
    for i in range(5):  # a pool held at MAX_PROCESSES: the same decision at every check
        h.decided(DecisionNote(NOW + i, DEFAULT_POOL, 4, 4, "queue 100 > 20; clamped to [1, 4]"))
    h.decided(DecisionNote(NOW + 9, "io", 4, 4, "queue 100 > 20; clamped to [1, 4]"))
    h.decided(DecisionNote(NOW + 10, DEFAULT_POOL, 4, 3, "queue 5 < 10"))
    assert [(d.pool, d.at_s) for d in h.decisions()] == [(DEFAULT_POOL, NOW), ("io", NOW + 9), (DEFAULT_POOL, NOW + 10)]


def test_a_young_agents_chart_spans_its_points_and_an_old_one_the_hour() -> None:
    from dqagent.report.chart import chart_svg

    young = chart_svg(DEFAULT_POOL, [Point(NOW - 60, 1, 0, 1), Point(NOW, 4, 100, 4)], NOW)
    assert "-5 min" in young and "-60 min" not in young
    old = chart_svg(DEFAULT_POOL, [Point(NOW - 7200 + i * 5, 1, 0, 1) for i in range(1440)], NOW)
    assert "-60 min" in old and 'data-points="1440"' in old


def test_a_page_is_built_once_per_snapshot_however_many_ask(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given: the page's renderers counted, and a snapshot the loop has not replaced yet
    built: list[str] = []
    real_full, real_fragment = pageapp.full_page, pageapp.fragment
    monkeypatch.setattr(pageapp, "full_page", lambda d: built.append("page") or real_full(d))
    monkeypatch.setattr(pageapp, "fragment", lambda d: built.append("fragment") or real_fragment(d))
    current = [snapshot()]
    pools = lambda: (Pool(DEFAULT_POOL, SETTINGS),)  # noqa: E731 (a new tuple each time, as the agent's)
    app = page_app(metrics_app, page_source(lambda: current[0], lambda: SETTINGS, pools))
    # When: a crowd loads the page, its fragment and /status.json from that one snapshot
    first = [call(app, "GET", path)[2] for path in ("/", "/fragment.html", "/status.json")]
    for _ in range(50):
        assert [call(app, "GET", path)[2] for path in ("/", "/fragment.html", "/status.json")] == first
    # Then: each was built once; a new snapshot builds them again
    assert built == ["page", "fragment"]
    current[0] = snapshot(redis_up=False)
    call(app, "GET", "/")
    assert built == ["page", "fragment", "page"]

"""The status page's HTML, rendered on the server from the status document (`dqagent.report.statusdoc`), each
pool's history and the last decisions: the figures are in the HTML itself, so the page reads the same with
JavaScript off (it then reloads itself every `NOSCRIPT_REFRESH_S` seconds by a `<noscript>` meta refresh).
With JavaScript on, /page.js fetches `fragment()` every few seconds and swaps it in, without a reload.

Every string from the document is escaped (`html.escape`, quotes included): queue, pool and unit names,
reasons, errors, a pause's reason and the agent's STATUS= text come from outside. Nothing here acts: the
page has no form, no button, no link that changes anything. Elements carrying a figure have a `data-field`
(rows: `data-pool`, `data-queue`, `data-unit`) so that a test can read them.
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from dqagent.core.history import DecisionNote, Point
from dqagent.report.chart import chart_svg
from dqagent.report.statusdoc import iso

_EMPTY = '<tr><td colspan="{}">{}</td></tr>'
#: Seconds between two reloads of the page when JavaScript is off.
NOSCRIPT_REFRESH_S = 10


@dataclass(frozen=True, slots=True)
class PageData:
    """What one page shows, from one snapshot: the public status document, each pool's points, the last
    decisions, and when the snapshot was taken (wall-clock seconds)."""

    document: dict[str, Any]
    history: Mapping[str, Sequence[Point]]
    decisions: Sequence[DecisionNote]
    taken_at_s: float


def e(value: object) -> str:
    """Text from anywhere, safe in HTML text and in quoted attributes."""
    return html.escape("—" if value is None else f"{value:g}" if isinstance(value, float) else str(value))


def full_page(data: PageData | None) -> str:
    """The whole page (head, the live fragment)."""
    return ("<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            "<title>dqagent status</title><link rel=\"stylesheet\" href=\"/page.css\">"
            "<script src=\"/page.js\" defer></script>"
            f"<noscript><meta http-equiv=\"refresh\" content=\"{NOSCRIPT_REFRESH_S}\"></noscript>"
            f"</head><body>{fragment(data)}</body></html>")


def fragment(data: PageData | None) -> str:
    """The live part of the page: `<main id="live">` with every figure (what /page.js swaps in)."""
    if data is None:
        return ('<main id="live" data-taken-at=""><h1>dqagent</h1>'
                "<p class=\"alert\">No check has completed yet: the figures appear after the agent's first check."
                "</p></main>")
    doc = data.document
    out = [f'<main id="live" data-taken-at="{data.taken_at_s:.3f}">',
           f'<h1>dqagent <span class="when">as of <time data-field="taken_at">{e(iso(data.taken_at_s))}</time>'
           "</span></h1>"]
    out += _alerts(doc)
    out.append(f'<p class="agent">agent: <span data-field="monitor_state">{e(doc["monitor_state"])}</span>'
               f' <span class="status" data-field="agent_status_text">{e(doc["agent_status_text"])}</span></p>')
    if doc.get("host_max_processes") is not None:
        out.append(f'<p>host cap: <span data-field="host_max_processes">{e(doc["host_max_processes"])}</span>'
                   " workers over all pools</p>")
    if doc.get("guard"):
        out.append(_guard(doc["guard"]))
    for name, pool in doc["pools"].items():
        out.append(_pool(name, pool, data.history.get(name, ()), data.taken_at_s))
    out.append(_decisions(data.decisions))
    out.append("</main>")
    return "".join(out)


def _alerts(doc: dict[str, Any]) -> list[str]:
    out = []
    if doc["redis_error"]:
        out.append(f'<p class="alert" data-field="redis_error">Redis unavailable: {e(doc["redis_error"])}</p>')
    if doc["systemd_error"]:
        out.append(f'<p class="alert" data-field="systemd_error">systemd unavailable: {e(doc["systemd_error"])}</p>')
    for r in doc.get("broker_data_rejected", []):
        out.append(f'<p class="note" data-field="broker_data_rejected">skipped untrusted broker data: '
                   f"{e(r['kind'])} {e(r['key'])}: {e(r['reason'])}</p>")
    return out


def _guard(g: dict[str, Any]) -> str:
    return (f'<p class="guard">guard: cpu some {e(g["cpu_some_avg10"])}%, memory some {e(g["memory_some_avg10"])}%;'
            f' one more worker now: <span data-field="one_more_worker">{e(g["one_more_worker"])}</span></p>')


def _pool(name: str, p: dict[str, Any], points: Sequence[Point], now_s: float) -> str:
    figures = [("workers running", "current_processes"), ("range", None), ("queue length", "queue_length"),
               ("scale-up at", "scale_up_threshold"), ("scale-down at", "scale_down_threshold"),
               ("policy", "scaling_policy")]
    cells = []
    for label, key in figures:
        value = (f'<span data-field="min_processes">{e(p["min_processes"])}</span> to '
                 f'<span data-field="max_processes">{e(p["max_processes"])}</span>') if key is None else \
            f'<span data-field="{key}">{e(p[key])}</span>'
        cells.append(f"<div><dt>{label}</dt><dd>{value}</dd></div>")
    out = [f'<section class="pool" data-pool="{e(name)}"><h2>pool {e(name)}</h2>',
           f'<dl class="figures">{"".join(cells)}</dl>']
    if p.get("pause"):
        out.append(f'<p class="alert" data-field="pause">{e(p["pause"]["status"])}</p>')
    if p.get("schedule"):
        sch = p["schedule"]
        out.append(f'<p class="note">schedule ({e(sch["timezone"])}): in force {e(", ".join(sch["windows"]) or "none")}'
                   f'; floor {e(sch["floor"])}, ceiling {e(sch["ceiling"])}</p>')
    out.append('<figure>' + chart_svg(name, points, now_s) + '<figcaption><span class="key workers">running workers'
               '</span> <span class="key target">target</span> <span class="key messages">outstanding messages'
               ' (right axis)</span></figcaption></figure>')
    out.append(_queues(p["queues"]))
    out.append(_workers(p["process_list"], p["failing_workers"]))
    out.append("</section>")
    return "".join(out)


def _queues(queues: dict[str, dict[str, Any]]) -> str:
    keys = ("ready", "in_flight", "delayed", "dead_lettered", "orphaned", "oldest_age_s")
    rows = "".join(f'<tr data-queue="{e(q)}"><th scope="row">{e(q)}</th>'
                   + "".join(f'<td data-field="{k}">{e(f[k])}</td>' for k in keys[:-1])
                   + f'<td data-field="oldest_age_s">{_age(f["oldest_age_s"])}</td></tr>'
                   for q, f in queues.items())
    return ('<table class="queues"><caption>queues</caption><thead><tr><th>queue</th><th>ready</th><th>in flight'
            '</th><th>delayed</th><th>dead-lettered</th><th>orphaned</th><th>oldest waiting (s)</th></tr></thead>'
            f"<tbody>{rows or _EMPTY.format(7, 'not read')}</tbody></table>")


def _age(seconds: float | None) -> str:
    return "nothing waiting" if seconds is None else f"{seconds:.1f}"


def _workers(units: list[dict[str, Any]], failing: list[dict[str, Any]]) -> str:
    rows = "".join(f'<tr data-unit="{e(w["unit"])}"><th scope="row">{e(w["unit"])}</th>'
                   f'<td data-field="pid">{e(w["pid"])}</td><td data-field="start_time">{e(w["start_time"])}</td>'
                   f'<td data-field="status">{e(w["status"])}</td></tr>' for w in units)
    out = ('<table class="workers"><caption>workers</caption><thead><tr><th>unit</th><th>PID</th><th>since</th>'
           f"<th>state</th></tr></thead><tbody>{rows or _EMPTY.format(4, 'none')}</tbody></table>")
    for f in failing:
        out += (f'<p class="alert" data-field="failing">{e(f["unit"])} {e(f["state"])}: result {e(f["result"])}'
                f'{", " + e(f["exit"]) if f["exit"] else ""}; more: {e(f["more"])}</p>')
    return out


def _decisions(notes: Sequence[DecisionNote]) -> str:
    rows = "".join(f'<tr><td><time datetime="{e(iso(n.at_s))}">{e((iso(n.at_s) or "")[11:19])}</time></td>'
                   f'<td>{e(n.pool)}</td><td>{n.workers} → {n.target}</td>'
                   f'<td class="reason">{e(n.reason)}</td></tr>' for n in reversed(notes))
    return ('<section class="decisions"><h2>last decisions</h2><table><thead><tr><th>at (UTC)</th><th>pool</th>'
            f'<th>workers</th><th>why</th></tr></thead><tbody data-field="decisions">'
            f"{rows or _EMPTY.format(4, 'none yet')}</tbody></table></section>")

"""The status page's chart: one pool's running workers and target against its outstanding messages over the
last hour, as plain SVG rendered here (no script, no library: it shows with JavaScript off, and the package
ships nothing to fetch). Workers on the left axis, messages on the right: their scales differ by orders of
magnitude. Text from outside (the pool's name) is escaped.
"""

from __future__ import annotations

import html
from collections.abc import Sequence

from dqagent.core.history import WINDOW_S, Point

WIDTH, HEIGHT = 640, 200
LEFT, RIGHT, TOP, BOTTOM = 36, 52, 10, 24


def nice_ceiling(x: float) -> int:
    """The smallest of 1, 2, 5 x 10^k at or above `x` (at least 1): a readable axis maximum."""
    n = 1
    while True:
        for m in (1, 2, 5):
            if m * n >= x:
                return m * n
        n *= 10


#: The shortest span the chart shows (seconds): a young agent's few minutes fill the chart, up to the hour.
MIN_SPAN_S = 300.0


def chart_svg(pool: str, points: Sequence[Point], now_s: float, window_s: float = WINDOW_S) -> str:
    """The SVG of `points` over [now - span, now], the span from the oldest point (between `MIN_SPAN_S` and
    `window_s`); `data-points` says how many points it draws."""
    w, h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    span = min(window_s, max(MIN_SPAN_S, now_s - points[0].at_s if points else 0.0))
    y_workers = nice_ceiling(max([1, *(max(p.running, p.target) for p in points)]))
    y_messages = nice_ceiling(max([1, *(p.outstanding or 0 for p in points)]))

    def x(t: float) -> float:
        return LEFT + w * max(0.0, min(1.0, (t - (now_s - span)) / span))

    def y(v: float, top: int) -> float:
        return TOP + h * (1 - v / top)

    def line(css: str, values: Sequence[tuple[float, float | None]], top: int) -> list[str]:
        """One polyline per run of known values (a gap where the broker was not read)."""
        runs: list[list[str]] = [[]]
        for t, v in values:
            if v is None:
                runs.append([])
            else:
                runs[-1].append(f"{x(t):.1f},{y(v, top):.1f}")
        return [f'<polyline class="{css}" points="{" ".join(r)}"/>' for r in runs if r]

    name = html.escape(pool)
    parts = [f'<svg class="chart" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
             f'data-points="{len(points)}" aria-label="pool {name}: workers and outstanding messages, last hour">',
             f"<title>pool {name}: running workers, target and outstanding messages over the last hour</title>",
             f'<rect class="frame" x="{LEFT}" y="{TOP}" width="{w}" height="{h}"/>']
    for frac in (0.0, 0.5, 1.0):
        yy = TOP + h * (1 - frac)
        parts.append(f'<line class="grid" x1="{LEFT}" y1="{yy:.1f}" x2="{LEFT + w}" y2="{yy:.1f}"/>')
        parts.append(f'<text class="axis workers" x="{LEFT - 4}" y="{yy + 4:.1f}" text-anchor="end">'
                     f"{y_workers * frac:g}</text>")
        parts.append(f'<text class="axis messages" x="{LEFT + w + 4}" y="{yy + 4:.1f}">{y_messages * frac:g}</text>')
    step_min = next(m for m in (1, 2, 5, 10, 15, 30, 60) if span / 60 / m <= 5)
    for minutes in range(0, int(span // 60) + 1, step_min):
        parts.append(f'<text class="axis" x="{x(now_s - minutes * 60):.1f}" y="{HEIGHT - 6}" text-anchor="middle">'
                     f"{f'-{minutes} min' if minutes else 'now'}</text>")
    parts += line("messages", [(p.at_s, p.outstanding) for p in points], y_messages)
    parts += line("target", [(p.at_s, p.target) for p in points], y_workers)
    parts += line("workers", [(p.at_s, p.running) for p in points], y_workers)
    parts.append("</svg>")
    return "".join(parts)

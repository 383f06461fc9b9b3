"""A Gantt strip as inline SVG (pure string builder): one lane per category, one bar per interval.

The run report draws the lifecycle states with it (a lane per state, a bar per visit), so one sees at
a glance where wall time goes. Bars carry a ``kind`` (``ok``, ``failed``, ``cancelled``,
``interrupted``, ``open``) written as ``data-kind`` and drawn differently; vertical markers
(engine.plots.svg.Marker) mark events such as a failure or a resumed generation.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from html import escape

from engine.plots.svg import Marker, fmt_tick, marker_svg, nice_ticks

LANE_H, LABEL_W, TOP, BOTTOM, RIGHT = 22, 118, 34, 40, 16
KIND_STYLE = {
    "ok": "",
    "failed": ' stroke="#d62728" stroke-width="2"',
    "cancelled": ' stroke="#ff7f0e" stroke-width="2"',
    "interrupted": ' stroke="#555" stroke-width="1.5" stroke-dasharray="3 2"',
    "open": ' stroke="#1f77b4" stroke-width="1.5" stroke-dasharray="5 3"',
}
KIND_FILL = {"failed": "#d62728", "cancelled": "#ff7f0e", "interrupted": "#999"}
# Lane colours leave out the outcome colours above, so a failed bar never looks like a lane's own.
LANE_COLORS = ("#aec7e8", "#1f77b4", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22")


@dataclass
class Bar:
    lane: str
    start: float
    end: float
    label: str = ""  # tooltip
    kind: str = "ok"


@dataclass
class Gantt:
    name: str
    title: str
    lanes: Sequence[str]
    bars: list[Bar] = field(default_factory=list)
    markers: list[Marker] = field(default_factory=list)
    xlabel: str = "time (s)"
    width: int = 1100


def render_gantt(g: Gantt) -> str:
    height = TOP + LANE_H * len(g.lanes) + BOTTOM
    w = g.width
    parts = [
        f'<svg class="plot gantt" data-plot="{escape(g.name)}" xmlns="http://www.w3.org/2000/svg" '
        f'viewBox="0 0 {w} {height}" width="{w}" height="{height}" role="img">',
        f"<title>{escape(g.title)}</title>",
        f'<rect x="0" y="0" width="{w}" height="{height}" fill="#fff"/>',
        f'<text x="{w / 2}" y="20" text-anchor="middle" font-size="14" font-weight="bold">'
        f"{escape(g.title)}</text>",
    ]
    ends = [b.end for b in g.bars] + [m.x for m in g.markers]
    if not ends:
        parts.append(f'<text x="{w / 2}" y="{height / 2}" text-anchor="middle" fill="#888">no data</text>')
        return "".join(parts) + "</svg>"
    ticks = nice_ticks(0.0, max(ends))
    x0, x1 = ticks[0], ticks[-1]
    pw = w - LABEL_W - RIGHT
    bottom = TOP + LANE_H * len(g.lanes)

    def px(x: float) -> float:
        return LABEL_W + (x - x0) / ((x1 - x0) or 1) * pw

    lane_y = {lane: TOP + LANE_H * i for i, lane in enumerate(g.lanes)}
    for i, lane in enumerate(g.lanes):
        y = lane_y[lane]
        if i % 2:
            parts.append(f'<rect x="{LABEL_W}" y="{y}" width="{pw}" height="{LANE_H}" fill="#f7f7f7"/>')
        parts.append(
            f'<text x="{LABEL_W - 6}" y="{y + LANE_H / 2 + 4}" text-anchor="end" font-size="12">'
            f"{escape(lane)}</text>"
        )
    for t in ticks:
        parts.append(
            f'<line x1="{px(t):.1f}" x2="{px(t):.1f}" y1="{TOP}" y2="{bottom}" stroke="#e4e4e4"/>'
            f'<text x="{px(t):.1f}" y="{bottom + 14}" text-anchor="middle" font-size="11">'
            f"{fmt_tick(t)}</text>"
        )
    parts.append(
        f'<rect x="{LABEL_W}" y="{TOP}" width="{pw}" height="{bottom - TOP}" fill="none" stroke="#999"/>'
        f'<text x="{LABEL_W + pw / 2}" y="{height - 8}" text-anchor="middle" font-size="12">'
        f"{escape(g.xlabel)}</text>"
    )
    colors = {lane: LANE_COLORS[i % len(LANE_COLORS)] for i, lane in enumerate(g.lanes)}
    for bar in g.bars:
        if bar.lane not in lane_y:
            continue
        x = px(bar.start)
        width = max(1.0, px(bar.end) - x)  # a state shorter than a pixel stays visible
        fill = KIND_FILL.get(bar.kind, colors[bar.lane])
        parts.append(
            f'<rect class="bar" data-lane="{escape(bar.lane)}" data-kind="{escape(bar.kind)}" '
            f'x="{x:.2f}" y="{lane_y[bar.lane] + 3}" width="{width:.2f}" height="{LANE_H - 6}" '
            f'fill="{fill}" fill-opacity="0.85"{KIND_STYLE.get(bar.kind, "")}>'
            f"<title>{escape(bar.label)}</title></rect>"
        )
    for k, m in enumerate(g.markers):
        parts.append(marker_svg(m, px(m.x), TOP, bottom, TOP + 12 + 12 * (k % 3)))
    return "".join(parts) + "</svg>"

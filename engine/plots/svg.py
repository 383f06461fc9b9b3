"""Tiny inline-SVG charts (pure string builders): no JavaScript, no network, no dependencies.

Each chart is one ``<svg class="plot" data-plot=NAME>`` element with axes, nice ticks, a title and
a legend, so a report is a single self-contained HTML file that any browser renders offline. Shared by
the load tester's report and the run report (engine.report): xy charts (``Chart``) and a Gantt strip
(``Gantt``, one lane per category, e.g. the lifecycle states). A series with per-point ``labels``
draws every point with a tooltip and its values as ``data-x``/``data-y``, so a reader (or a test)
can recover the exact numbers.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from html import escape

PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf")
W, H = 640, 320
ML, MR, MT, MB = 64, 16, 34, 46  # margins: left, right, top, bottom


@dataclass
class Series:
    name: str
    xs: Sequence[float]
    ys: Sequence[float]
    style: str = "line"  # "line" | "points" | "step" | "bars"
    color: str | None = None
    labels: Sequence[str] | None = None  # one tooltip per point (drawn as a marked circle)
    notes: Sequence[str] | None = None  # short text written next to each point (for a few points)


@dataclass
class Marker:
    """A vertical reference line (e.g. the search's answer) with a label."""

    x: float
    label: str
    color: str = "#444"
    kind: str = ""  # written as data-mark, e.g. "failed"
    detail: str = ""  # a tooltip (the full text behind a short label)


@dataclass
class Chart:
    name: str
    title: str
    xlabel: str
    ylabel: str
    series: list[Series] = field(default_factory=list)
    markers: list[Marker] = field(default_factory=list)
    hline: tuple[float, str] | None = None  # (y, label), e.g. a latency target
    headroom: float = 0.0  # extra y range above the data, as a share of it (room for point notes)


def nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """Round tick values covering [lo, hi] (1/2/5 x 10^k steps)."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return [0.0]
    if hi <= lo:
        hi = lo + (abs(lo) or 1.0)
    raw = (hi - lo) / max(count, 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)
    first = math.floor(lo / step + 1e-9)
    last = math.ceil(hi / step - 1e-9)
    return [round(i * step, 10) for i in range(first, max(last, first + 1) + 1)]


def fmt_tick(v: float) -> str:
    if v == 0:
        return "0"
    if abs(v) >= 10000 or abs(v) < 0.01:
        return f"{v:.2g}"
    return f"{v:.6g}" if v == int(v) else f"{v:.3g}"


def render(chart: Chart) -> str:
    xs = [x for s in chart.series for x in s.xs] + [m.x for m in chart.markers]
    ys = [y for s in chart.series for y in s.ys]
    if chart.hline:
        ys.append(chart.hline[0])
    parts = [
        f'<svg class="plot" data-plot="{escape(chart.name)}" xmlns="http://www.w3.org/2000/svg" '
        f'viewBox="0 0 {W} {H}" width="{W}" height="{H}" role="img">',
        f"<title>{escape(chart.title)}</title>",
        f'<rect x="0" y="0" width="{W}" height="{H}" fill="#fff"/>',
        f'<text x="{W / 2}" y="20" text-anchor="middle" font-size="14" font-weight="bold">'
        f"{escape(chart.title)}</text>",
    ]
    if not xs or not ys:
        parts.append(f'<text x="{W / 2}" y="{H / 2}" text-anchor="middle" fill="#888">no data</text></svg>')
        return "".join(parts)
    xt = nice_ticks(min(xs), max(xs))
    lo, hi = min(0.0, min(ys)), max(ys)
    yt = nice_ticks(lo, hi + chart.headroom * ((hi - lo) or abs(hi) or 1.0))
    x0, x1, y0, y1 = xt[0], xt[-1], yt[0], yt[-1]
    pw, ph = W - ML - MR, H - MT - MB

    def px(x: float) -> float:
        return ML + (x - x0) / ((x1 - x0) or 1) * pw

    def py(y: float) -> float:
        return MT + ph - (y - y0) / ((y1 - y0) or 1) * ph

    for t in yt:
        parts.append(f'<line x1="{ML}" x2="{W - MR}" y1="{py(t):.1f}" y2="{py(t):.1f}" stroke="#eee"/>')
        parts.append(
            f'<text x="{ML - 6}" y="{py(t) + 4:.1f}" text-anchor="end" font-size="11">{fmt_tick(t)}</text>'
        )
    for t in xt:
        parts.append(
            f'<text x="{px(t):.1f}" y="{H - MB + 16}" text-anchor="middle" font-size="11">'
            f"{fmt_tick(t)}</text>"
        )
    parts.append(
        f'<rect x="{ML}" y="{MT}" width="{pw}" height="{ph}" fill="none" stroke="#999"/>'
        f'<text x="{ML + pw / 2}" y="{H - 8}" text-anchor="middle" font-size="12">'
        f"{escape(chart.xlabel)}</text>"
        f'<text transform="translate(14,{MT + ph / 2}) rotate(-90)" text-anchor="middle" font-size="12">'
        f"{escape(chart.ylabel)}</text>"
    )
    if chart.hline:
        y, label = chart.hline
        parts.append(
            f'<line x1="{ML}" x2="{W - MR}" y1="{py(y):.1f}" y2="{py(y):.1f}" stroke="#d62728" '
            f'stroke-dasharray="6 4"/><text x="{W - MR - 4}" y="{py(y) - 4:.1f}" text-anchor="end" '
            f'font-size="11" fill="#d62728">{escape(label)}</text>'
        )
    for k, m in enumerate(chart.markers):
        parts.append(marker_svg(m, px(m.x), MT, MT + ph, MT + ph - 6 - 13 * k))
    clip = "clip-" + hashlib.sha1(chart.name.encode()).hexdigest()[:12]
    parts.append(
        f'<clipPath id="{clip}"><rect x="{ML}" y="{MT - 4}" width="{pw + 4}" height="{ph + 8}"/></clipPath>'
    )
    parts.append(f'<g clip-path="url(#{clip})">')
    legend: list[str] = []
    for i, s in enumerate(chart.series):
        color = s.color or PALETTE[i % len(PALETTE)]
        pts = list(zip(s.xs, s.ys, strict=True))
        if s.style == "bars":
            gap = (px(pts[1][0]) - px(pts[0][0])) if len(pts) > 1 else pw / 20
            bw = max(1.0, gap * 0.9)
            parts.append(f'<g fill="{color}" class="series">')
            parts.extend(
                f'<rect x="{px(x) - bw / 2:.1f}" y="{py(y):.1f}" width="{bw:.1f}" '
                f'height="{py(y0) - py(y):.1f}"/>'
                for x, y in pts
            )
            parts.append("</g>")
        elif s.style == "points":
            if s.labels is None:  # a labelled series draws its points below, each with its tooltip
                parts.append(f'<g fill="{color}" fill-opacity="0.6" class="series">')
                r = 4 if len(pts) <= 40 else 2.2
                parts.extend(f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="{r}"/>' for x, y in pts)
                parts.append("</g>")
        else:
            if s.style == "step":
                stepped: list[tuple[float, float]] = []
                for j, (x, y) in enumerate(pts):
                    if j:
                        stepped.append((x, pts[j - 1][1]))
                    stepped.append((x, y))
                pts = stepped
            d = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in pts)
            parts.append(
                f'<polyline class="series" points="{d}" fill="none" stroke="{color}" stroke-width="1.8"/>'
            )
            if len(pts) <= 40 and s.style == "line" and s.labels is None:
                parts.extend(
                    f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="3" fill="{color}"/>' for x, y in pts
                )
        if s.labels is not None:
            parts.append(_labelled_points(s, color, px, py))
        lx, ly = ML + 8, MT + 14 + 14 * i
        legend.append(
            f'<rect x="{lx}" y="{ly - 8}" width="10" height="10" fill="{color}"/>'
            f'<text x="{lx + 14}" y="{ly + 1}" font-size="11">{escape(s.name)}</text>'
        )
    # series are clipped to the plot area; the legend is drawn on top of them
    parts.append("</g>")
    if legend:
        width = 22 + 6.2 * max(len(s.name) for s in chart.series)
        legend.insert(
            0,
            f'<rect x="{ML + 3}" y="{MT + 3}" width="{width:.0f}" height="{14 * len(chart.series) + 6}" '
            'fill="#fff" fill-opacity="0.8"/>',
        )
    return "".join(parts + legend) + "</svg>"


def marker_svg(m: Marker, x: float, top: float, bottom: float, label_y: float) -> str:
    kind = f' data-mark="{escape(m.kind)}"' if m.kind else ""
    tip = f"<title>{escape(m.detail)}</title>" if m.detail else ""
    return (
        f'<g class="marker"{kind}>{tip}<line x1="{x:.1f}" x2="{x:.1f}" y1="{top}" y2="{bottom}" '
        f'stroke="{m.color}" stroke-dasharray="4 3" stroke-width="1.5"/>'
        f'<text x="{x + 4:.1f}" y="{label_y:.1f}" font-size="11" fill="{m.color}">'
        f"{escape(m.label)}</text></g>"
    )


def _labelled_points(
    s: Series, color: str, px: Callable[[float], float], py: Callable[[float], float]
) -> str:
    assert s.labels is not None and len(s.labels) == len(s.xs), f"series {s.name!r}: one label per point"
    out = [f'<g fill="{color}" class="series points" data-series="{escape(s.name)}">']
    for i, (x, y, label) in enumerate(zip(s.xs, s.ys, s.labels, strict=True)):
        out.append(
            f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="3.5" data-x="{x!r}" data-y="{y!r}">'
            f"<title>{escape(label)}</title></circle>"
        )
        if s.notes is not None:
            tx, ty = px(x) + 4, py(y) - 6
            out.append(
                f'<text class="note" x="{tx:.1f}" y="{ty:.1f}" font-size="10" fill="{color}" '
                f'transform="rotate(-28 {tx:.1f} {ty:.1f})">{escape(s.notes[i])}</text>'
            )
    out.append("</g>")
    return "".join(out)


def histogram(values: Sequence[float], bins: int = 30) -> tuple[list[float], list[float]]:
    """(bin centres, counts) over [min, max]; a single bin for constant data."""
    if not values:
        return [], []
    lo, hi = min(values), max(values)
    if hi == lo:
        return [lo], [float(len(values))]
    width = (hi - lo) / bins
    counts = [0.0] * bins
    for v in values:
        counts[min(int((v - lo) / width), bins - 1)] += 1
    return [lo + width * (i + 0.5) for i in range(bins)], counts


def cdf(values: Sequence[float], points: int = 200) -> tuple[list[float], list[float]]:
    """(value, fraction <= value) at up to ``points`` quantiles."""
    if not values:
        return [], []
    ordered = sorted(values)
    n = len(ordered)
    idx = sorted({min(n - 1, round(i * (n - 1) / max(points - 1, 1))) for i in range(points)})
    return [ordered[i] for i in idx], [(i + 1) / n for i in idx]

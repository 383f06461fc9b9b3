"""The self-contained HTML report (pure: summary + requests rows in, one HTML string out).

Inline SVG only (engine.plots.svg), inline CSS, no scripts and no external resources, so it
opens from disk in any browser without network access. Collapsible sections use <details>.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable, Sequence
from html import escape
from typing import Any

from engine.plots.page import CSS
from engine.plots.page import fmt as _f
from engine.plots.svg import Chart, Marker, Series, cdf, histogram, render


def _dist(cell: dict[str, Any], key: str, p: str) -> Any:
    d = cell.get(key) or {}
    return d.get(p)


def _cell_table(cells: Sequence[dict[str, Any]]) -> str:
    head = (
        "<tr><th>cell</th><th>loop</th><th>requests</th><th>ok</th><th>failed</th><th>req/s</th>"
        "<th>out tok/s</th><th>goodput req/s</th><th>good %</th><th>TTFT p50</th><th>TTFT p99</th>"
        "<th>TPOT p50</th><th>TPOT p99</th><th>ITL p99</th><th>E2E p50</th><th>E2E p99</th>"
        "<th>lag p99</th><th>server PQ p50</th><th>window mean</th><th>errors</th></tr>"
    )
    rows = []
    for c in cells:
        gp = c["goodput"]
        frac = gp.get("fraction")
        lag = c.get("dispatch_lag_ms") or {}
        rows.append(
            "<tr>"
            + "".join(
                f"<td>{x}</td>"
                for x in (
                    escape(c["label"]),
                    c["loop"],
                    c["requests"],
                    c["completed"],
                    c["failed"],
                    _f(c["request_throughput"], 2),
                    _f(c["output_token_throughput"], 1),
                    _f(gp.get("requests_per_s"), 2),
                    _f(None if frac is None else frac * 100, 1),
                    _f(_dist(c, "ttft_ms", "p50")),
                    _f(_dist(c, "ttft_ms", "p99")),
                    _f(_dist(c, "tpot_ms", "p50"), 2),
                    _f(_dist(c, "tpot_ms", "p99"), 2),
                    _f(_dist(c, "itl_ms", "p99"), 2),
                    _f(_dist(c, "e2e_ms", "p50")),
                    _f(_dist(c, "e2e_ms", "p99")),
                    _f(lag.get("p99"), 2),
                    _f(c["server"]["prefill_queue_ms"].get("p50"), 1),
                    _f(c["window"].get("mean"), 1),
                    escape(", ".join(f"{k}: {v}" for k, v in c["errors_by_kind"].items()) or "none"),
                )
            )
            + "</tr>"
        )
    return f"<table>{head}{''.join(rows)}</table><p class='note'>latencies in ms</p>"


def _vs(values: Iterable[Any]) -> list[float]:
    return [float(v) for v in values if v is not None]


def _cell_charts(cell: dict[str, Any], rows: Sequence[dict[str, Any]]) -> list[str]:
    ok = [r for r in rows if r["ok"]]
    name = cell["label"]
    charts: list[Chart] = []
    origin = "intended start" if cell["loop"] == "open" else "send"
    dist = Chart(f"latency-cdf:{name}", f"Latency distribution (CDF) — {name}", "ms", "fraction ≤ x")
    for key, label in (("ttft_ms", "TTFT"), ("e2e_ms", "E2E")):
        xs, ys = cdf(_vs(r[key] for r in ok))
        if xs:
            dist.series.append(Series(f"{label} (from {origin})", xs, ys, style="step"))
    charts.append(dist)
    for key, label in (("tpot_ms", "TPOT"), ("ttft_ms", "TTFT")):
        xs, ys = histogram(_vs(r[key] for r in ok))
        charts.append(
            Chart(
                f"hist-{key}:{name}",
                f"{label} histogram — {name}",
                f"{label} ms",
                "requests",
                [Series(label, xs, ys, style="bars")],
            )
        )
    itl = [v for r in ok for v in r["itl_ms"]]
    xs, ys = histogram(itl)
    charts.append(
        Chart(
            f"hist-itl:{name}", f"ITL histogram — {name}", "ms", "gaps", [Series("ITL", xs, ys, style="bars")]
        )
    )
    over = Chart(f"latency-time:{name}", f"Latency over the run — {name}", f"{origin} (s)", "ms")
    over.series.append(
        Series(
            f"E2E from {origin}",
            [r["intended_s"] if r["intended_s"] is not None else r["sent_s"] for r in ok],
            [r["e2e_ms"] for r in ok],
            style="points",
        )
    )
    if cell["loop"] == "open":
        lag = [r for r in rows if r["dispatch_lag_ms"] is not None]
        over.series.append(
            Series(
                "dispatch lag",
                [r["intended_s"] for r in lag],
                [r["dispatch_lag_ms"] for r in lag],
                style="points",
            )
        )
    charts.append(over)
    ends = [r["end_s"] for r in ok]
    if ends:
        # ~40 bins over the run (at least 0.1 s each), as a rate
        width = max(0.1, max(ends) / 40)
        counts: dict[int, int] = defaultdict(int)
        for t in ends:
            counts[int(t / width)] += 1
        bins = range(max(counts) + 1)
        charts.append(
            Chart(
                f"throughput-time:{name}",
                f"Completions per second — {name}",
                "time (s)",
                "req/s",
                [
                    Series(
                        f"completed ({width:.2g} s bins)",
                        [b * width for b in bins],
                        [counts.get(b, 0) / width for b in bins],
                        style="step",
                    )
                ],
            )
        )
    series = cell["window"].get("series") or []
    pq = [r for r in rows if r["prefill_queue_ms"] is not None and r["end_s"] is not None]
    wq = Chart(
        f"window-queue:{name}", f"Window, in-flight and server queue — {name}", "time (s)", "requests / ms"
    )
    if series:
        wq.series.append(Series("window", [s[0] for s in series], [s[1] for s in series], style="step"))
        wq.series.append(Series("in flight", [s[0] for s in series], [s[2] for s in series], style="step"))
    if pq:
        wq.series.append(
            Series(
                "prefill queue ms (server)",
                [r["end_s"] for r in pq],
                [r["prefill_queue_ms"] for r in pq],
                style="points",
            )
        )
    charts.append(wq)
    return [render(c) for c in charts]


def _groups(cells: list[dict[str, Any]], searched: bool) -> list[tuple[str, str, list[dict[str, Any]]]]:
    """(suffix, style, cells): with a search, sweep cells draw as lines and search probes as points."""
    if not searched:
        return [("", "line", cells)]
    sweep = [c for c in cells if c["label"].startswith("sweep ")]
    probes = [c for c in cells if c["label"].startswith("search ")]
    return [g for g in ((" (sweep)", "line", sweep), (" (search probes)", "points", probes)) if g[2]]


def _pts(cells: list[dict[str, Any]], getter: Any) -> tuple[list[float], list[float]]:
    pairs = [(c["load"]["value"], getter(c)) for c in cells]
    pairs = [(a, b) for a, b in pairs if b is not None]
    return [a for a, _ in pairs], [b for _, b in pairs]


def _load_charts(summary: dict[str, Any]) -> list[str]:
    cells = [c for c in summary["cells"] if c["load"]["kind"] in ("rate", "concurrency")]
    if len(cells) < 2:
        return []
    out = []
    search = summary.get("search") or {}
    targets = summary.get("goodput_targets") or {}
    for kind in sorted({c["load"]["kind"] for c in cells}):
        cs = sorted((c for c in cells if c["load"]["kind"] == kind), key=lambda c: c["load"]["value"])
        markers = []
        if search.get("kind") == kind:
            if search.get("answer") is not None:
                markers.append(Marker(search["answer"], f"search: {search['answer']:g}", "#2ca02c"))
            if search.get("sweep_answer") is not None:
                markers.append(
                    Marker(search["sweep_answer"], f"sweep: {search['sweep_answer']:g}", "#9467bd")
                )
        tp = Chart(f"throughput-vs-load:{kind}", f"Throughput vs {kind}", kind, "requests/s", markers=markers)
        tok = Chart(f"tokens-vs-load:{kind}", f"Output tokens/s vs {kind}", kind, "tokens/s", markers=markers)
        lat = Chart(f"latency-vs-load:{kind}", f"Latency vs {kind}", kind, "ms", markers=markers)
        good = Chart(
            f"good-vs-load:{kind}", f"Requests meeting the targets vs {kind}", kind, "% good", markers=markers
        )
        for suffix, style, group in _groups(cs, search.get("kind") == kind):
            tp.series.append(
                Series("throughput" + suffix, *_pts(group, lambda c: c["request_throughput"]), style)
            )
            tp.series.append(
                Series("goodput" + suffix, *_pts(group, lambda c: c["goodput"]["requests_per_s"]), style)
            )
            tok.series.append(
                Series("output tok/s" + suffix, *_pts(group, lambda c: c["output_token_throughput"]), style)
            )
            for key, label in (("ttft_ms", "TTFT"), ("e2e_ms", "E2E")):
                for p in ("p50", "p99"):
                    lat.series.append(
                        Series(
                            f"{label} {p}{suffix}",
                            *_pts(group, lambda c, k=key, q=p: (c[k] or {}).get(q)),
                            style,
                        )
                    )
            frac = _pts(
                group, lambda c: None if c["goodput"]["fraction"] is None else c["goodput"]["fraction"] * 100
            )
            good.series.append(Series("good %" + suffix, *frac, style))
        if kind == "rate":
            x = [c["load"]["value"] for c in cs]
            tp.series.append(Series("offered rate", x, x, color="#bbb"))
        if search.get("min_good_fraction") is not None:
            good.hline = (
                search["min_good_fraction"] * 100,
                f"pass line {search['min_good_fraction'] * 100:g}%",
            )
        if targets.get("e2e_ms") is not None:
            lat.hline = (targets["e2e_ms"], f"E2E target {targets['e2e_ms']:g} ms")
        elif targets.get("ttft_ms") is not None:
            lat.hline = (targets["ttft_ms"], f"TTFT target {targets['ttft_ms']:g} ms")
        out += [render(tp), render(tok), render(lat)]
        if any(v is not None for v in targets.values()):
            out.append(render(good))
    return out


def build_html(summary: dict[str, Any], rows: Sequence[dict[str, Any]]) -> str:
    by_cell: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        by_cell[r["cell"]].append(r)
    target = summary.get("target", {})
    status = summary.get("status", "ok")
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>hotloop loadtest — {escape(str(target.get('model', '')))}</title>",
        f"<style>{CSS}</style></head><body>",
        f"<h1>hotloop loadtest: {escape(str(target.get('model', '')))}</h1>",
        f"<p class='note'>{escape(str(target.get('url', '')))} · mode "
        f"<b>{escape(str(summary.get('mode')))}</b>"
        f" · started {escape(str(summary.get('started_at', '')))}</p>",
    ]
    if status != "ok" or summary.get("error"):
        parts.append(f"<p class='err'><b>{escape(status)}</b>: {escape(str(summary.get('error') or ''))}</p>")
    loops = {c["loop"] for c in summary["cells"]}
    if "closed" in loops:
        parts.append(
            "<p class='note'>Closed-loop cells (concurrency, adaptive) measure latency from each "
            "request's send: a new request starts only when one finishes, so server slowdowns lower "
            "the offered load.</p>"
        )
    if "open" in loops:
        parts.append(
            "<p class='note'>Open-loop cells (rate) measure latency from each request's intended start "
            "(no coordinated omission); dispatch lag = actual send − intended start.</p>"
        )
    search = summary.get("search")
    if search:
        ans, sw = search.get("answer"), search.get("sweep_answer")
        parts.append(
            f"<h2>Adaptive search</h2><p class='ok'>Highest {escape(search['kind'])} meeting the goodput "
            f"targets (≥ {search['min_good_fraction'] * 100:.0f}% of requests good): <b>search "
            f"{'none' if ans is None else f'{ans:g}'}</b>"
            + ("" if "sweep_answer" not in search else f" · sweep {'none' if sw is None else f'{sw:g}'}")
            + f"</p><p class='note'>probes: {escape(json.dumps(search.get('probes')))}</p>"
        )
    parts.append("<h2>Summary</h2>")
    parts.append(_cell_table(summary["cells"]))
    load = _load_charts(summary)
    if load:
        parts.append("<h2>Throughput and latency vs load</h2><div class='grid'>" + "".join(load) + "</div>")
    for i, cell in enumerate(summary["cells"]):
        opened = " open" if i < 2 or i == len(summary["cells"]) - 1 else ""
        parts.append(
            f"<details{opened}><summary>{escape(cell['label'])} — details</summary><div class='grid'>"
        )
        parts.extend(_cell_charts(cell, by_cell.get(cell["label"], [])))
        parts.append("</div></details>")
    parts.append("</body></html>")
    return "\n".join(parts)

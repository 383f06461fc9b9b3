"""Pure parts of the load tester on known data: percentiles, per-request metrics, goodput,
summaries, schedules, the search stepper and chart ticks."""

from __future__ import annotations

import io
import statistics

import numpy as np
import pytest

from engine.errors import ConfigError
from engine.loadtest.metrics import (
    GoodputTargets,
    RequestRecord,
    dispatch_lag_ms,
    distribution,
    e2e_ms,
    is_good,
    itl_ms,
    max_concurrent,
    passes,
    percentile,
    summarize_cell,
    tpot_ms,
    ttft_ms,
    window_summary,
)
from engine.loadtest.schedules import OpenLoop, intended_offsets, parse_number_list
from engine.loadtest.search import SearchSpace, SearchState, next_probe, sweep_answer
from engine.plots.svg import Chart, Series, nice_ticks, render


def test_percentiles_on_known_data() -> None:
    data = [float(v) for v in range(1, 101)]  # 1..100
    assert percentile(data, 50) == pytest.approx(50.5)
    assert percentile(data, 90) == pytest.approx(90.1)
    assert percentile(data, 95) == pytest.approx(95.05)
    assert percentile(data, 99) == pytest.approx(99.01)
    assert percentile(data, 0) == 1.0 and percentile(data, 100) == 100.0
    assert percentile([7.0], 99) == 7.0
    rng = np.random.default_rng(3)
    sample = list(rng.exponential(100.0, size=997))
    for q in (50, 90, 95, 99):
        assert percentile(sample, q) == pytest.approx(float(np.percentile(sample, q)))
    d = distribution([4.0, None, 1.0, 3.0, 2.0])
    assert d["count"] == 4 and d["mean"] == 2.5 and d["min"] == 1.0 and d["max"] == 4.0
    assert d["p50"] == 2.5 and d["p90"] == pytest.approx(3.7)
    empty = distribution([])
    assert empty["count"] == 0 and empty["p99"] is None
    with pytest.raises(ValueError):
        percentile([], 50)


def _rec(**kw: object) -> RequestRecord:
    base: dict[str, object] = {"index": 0, "cell": "c", "sent_s": 1.0, "ok": True}
    base.update(kw)
    return RequestRecord(**base)  # type: ignore[arg-type]


def test_request_metrics_from_intended_start_and_from_send() -> None:
    # intended 1.0, sent 1.2 (lag 200 ms), chunks at 1.5, 1.6, 1.9 (end 2.0), 4 tokens
    r = _rec(
        intended_s=1.0, sent_s=1.2, first_token_s=1.5, end_s=2.0, chunk_s=[1.5, 1.6, 1.9], output_tokens=4
    )
    assert dispatch_lag_ms(r) == pytest.approx(200.0)
    assert ttft_ms(r) == pytest.approx(500.0)  # from the intended start, not the send
    assert e2e_ms(r) == pytest.approx(1000.0)
    assert tpot_ms(r) == pytest.approx(500.0 / 3)  # (E2E - TTFT) / (n - 1)
    assert itl_ms(r) == pytest.approx([100.0, 300.0])
    closed = _rec(sent_s=1.2, first_token_s=1.5, end_s=2.0, output_tokens=1)
    assert ttft_ms(closed) == pytest.approx(300.0) and dispatch_lag_ms(closed) is None
    assert tpot_ms(closed) == 0.0  # one-token outputs count as 0, like vllm bench serve
    targets = GoodputTargets(ttft_ms=400.0)
    assert not is_good(r, targets) and is_good(closed, targets)
    assert not is_good(_rec(ok=False, error_kind="timeout"), GoodputTargets())


def test_summary_counts_goodput_and_throughput() -> None:
    recs = [
        _rec(
            index=i,
            sent_s=float(i),
            first_token_s=i + 0.1 * (i + 1),
            end_s=i + 0.2 * (i + 1),
            chunk_s=[i + 0.1 * (i + 1)],
            input_tokens=10,
            output_tokens=5,
        )
        for i in range(4)
    ]
    recs.append(_rec(index=4, sent_s=4.0, end_s=4.05, ok=False, error_kind="http_503"))
    recs.append(_rec(index=5, sent_s=4.5, end_s=4.6, ok=False, error_kind="http_503"))
    s = summarize_cell(
        recs, label="c", load={"kind": "concurrency", "value": 1}, targets=GoodputTargets(e2e_ms=500.0)
    )
    assert (s["requests"], s["completed"], s["failed"]) == (6, 4, 2)
    assert s["errors_by_kind"] == {"http_503": 2}
    assert s["loop"] == "closed" and s["latency_origin"] == "send"
    # e2e = 200, 400, 600, 800 ms -> two good requests; duration = 4.6 - 0.0 s
    assert s["goodput"]["good_requests"] == 2
    assert s["goodput"]["requests_per_s"] == pytest.approx(2 / 4.6)
    assert s["request_throughput"] == pytest.approx(4 / 4.6)
    assert s["output_token_throughput"] == pytest.approx(20 / 4.6)
    assert s["total_token_throughput"] == pytest.approx(60 / 4.6)
    assert s["e2e_ms"]["p50"] == pytest.approx(500.0)
    assert s["dispatch_lag_ms"] is None
    assert passes(s, 0.3) and not passes(s, 0.5)


def test_max_concurrent_and_window_summary() -> None:
    recs = [_rec(sent_s=0.0, end_s=2.0), _rec(sent_s=1.0, end_s=3.0), _rec(sent_s=2.0, end_s=4.0)]
    assert max_concurrent(recs) == 2  # the first ends exactly when the third starts
    w = window_summary([(0.0, 8, 0), (1.0, 4, 3), (3.0, 6, 2)])
    assert w["min"] == 4 and w["max"] == 8 and w["final"] == 6 and w["max_in_flight"] == 3
    assert w["mean"] == pytest.approx((8 * 1 + 4 * 2) / 3)


def test_open_loop_schedules() -> None:
    const = intended_offsets(OpenLoop(4.0, "constant"), max_requests=5, duration_s=None)
    assert const == pytest.approx([0.0, 0.25, 0.5, 0.75, 1.0])
    assert intended_offsets(OpenLoop(4.0, "constant"), max_requests=None, duration_s=1.0) == pytest.approx(
        [0.0, 0.25, 0.5, 0.75]
    )
    poisson = intended_offsets(OpenLoop(50.0, "poisson", seed=1), max_requests=4001, duration_s=None)
    gaps = np.diff(poisson)
    assert statistics.fmean(gaps) == pytest.approx(1 / 50, rel=0.05)
    assert np.std(gaps) / np.mean(gaps) == pytest.approx(1.0, rel=0.1)  # exponential: CV 1
    bursty = np.diff(
        intended_offsets(OpenLoop(50.0, "gamma", 0.25, seed=1), max_requests=4001, duration_s=None)
    )
    assert statistics.fmean(bursty) == pytest.approx(1 / 50, rel=0.1)
    assert np.std(bursty) / np.mean(bursty) == pytest.approx(2.0, rel=0.15)  # gamma CV = 1/sqrt(shape)
    again = intended_offsets(OpenLoop(50.0, "poisson", seed=1), max_requests=10, duration_s=None)
    assert again == poisson[:10]  # deterministic for a seed
    with pytest.raises(ConfigError, match="--requests or --duration"):
        intended_offsets(OpenLoop(1.0), max_requests=None, duration_s=None)
    with pytest.raises(ConfigError, match="--rate"):
        intended_offsets(OpenLoop(0.0), max_requests=3, duration_s=None)


def test_number_lists() -> None:
    assert parse_number_list("1,2,4", option="--x") == [1.0, 2.0, 4.0]
    assert parse_number_list("1:16:x2", option="--x") == [1.0, 2.0, 4.0, 8.0, 16.0]
    assert parse_number_list("2:10:+4", option="--x") == [2.0, 6.0, 10.0]
    with pytest.raises(ConfigError, match="--sweep-rate"):
        parse_number_list("a,b", option="--sweep-rate")
    with pytest.raises(ConfigError, match="integers"):
        parse_number_list("1.5,2", option="--sweep-concurrency", integer=True)


def _search(space: SearchSpace, capacity: float) -> SearchState:
    state = SearchState(space)
    while (value := next_probe(state)) is not None:
        state.record(value, value <= capacity)
    return state


def test_search_finds_the_threshold() -> None:
    state = _search(SearchSpace("rate", 1.0, 100.0, rel_tol=0.05, max_probes=20), capacity=23.0)
    assert state.best is not None and 23.0 / 1.05 <= state.best <= 23.0
    conc = _search(SearchSpace("concurrency", 1, 64, max_probes=20), capacity=11)
    assert conc.best == 11 and all(v == int(v) for v, _ in conc.probes)
    assert _search(SearchSpace("rate", 2.0, 8.0), capacity=1.0).best is None
    assert _search(SearchSpace("rate", 2.0, 8.0), capacity=100.0).best == 8.0
    assert len(_search(SearchSpace("rate", 1.0, 1e6, max_probes=4), capacity=5e5).probes) == 4
    assert sweep_answer([(1, True), (2, True), (4, False), (8, False)]) == 2
    with pytest.raises(ConfigError, match="--search-range"):
        SearchSpace("rate", 5.0, 1.0).validate()


def test_chart_ticks_cover_the_data() -> None:
    ticks = nice_ticks(0.0, 52.4)
    assert ticks[0] <= 0.0 and ticks[-1] >= 52.4 and len(ticks) <= 8
    assert nice_ticks(3.0, 3.0)[-1] > 3.0
    svg = render(Chart("x", "T", "x", "y", [Series("s", [1.0, 2.0], [3.0, 4.0])]))
    assert svg.startswith("<svg") and 'data-plot="x"' in svg and "polyline" in svg
    assert "no data" in render(Chart("e", "Empty", "x", "y"))


def test_live_progress_renders_counts_latencies_and_errors() -> None:
    from rich.console import Console

    from engine.loadtest.progress import LiveProgress

    console = Console(record=True, width=100, file=io.StringIO())
    progress = LiveProgress(enabled=False, console=console)
    progress.start_cell("rate=5", planned=3, target_rate=5.0)
    progress.on_record(_rec(intended_s=0.0, sent_s=0.01, first_token_s=0.1, end_s=0.2, output_tokens=2))
    progress.on_record(_rec(intended_s=0.2, sent_s=0.2, end_s=0.3, ok=False, error_kind="http_503"))
    console.print(progress.render())
    text = console.export_text()
    assert "finished" in text and "2/3" in text and "target 5" in text
    assert "http_503: 1" in text and "p50 100.0" in text  # TTFT from the intended start


def test_request_body_and_urls() -> None:
    from engine.loadtest.client import Target, completions_url
    from engine.loadtest.prompts import Prompt

    assert completions_url("http://h:1/", None) == "http://h:1/inference/v1/completions"
    assert completions_url("http://h:1", "/v1/completions") == "http://h:1/v1/completions"
    assert completions_url("http://h:1/v1/completions", None) == "http://h:1/v1/completions"
    body = Target("u", "m", extra_body={"stream_options": None, "top_k": 0}).payload(Prompt([5, 6], 3))
    assert body["prompt"] == [5, 6] and body["max_tokens"] == 3 and body["stream"] is True
    assert "stream_options" not in body and body["top_k"] == 0 and body["perf_metrics_in_response"] is True
    assert Target("u", "m", secret="k3y").redact("bad key k3y") == "bad key ***"

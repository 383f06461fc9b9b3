"""Coordinated omission: against a server with a known delay and a fixed capacity, an open-loop run
above capacity must show latency (from each request's intended start) growing over the run, while
a closed loop at the server's capacity stays flat, because it only sends when a slot frees."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from loadtest_helpers import ThreadedMockServer, assert_counts_match, read_outputs, run_cli
from support.mock_server import MockConfig

# 2 requests at a time, each ~60 ms (40 ms to the first token + 4 x 5 ms): capacity ~33 req/s.
SERVER = MockConfig(model="mock", capacity=2, ttft_s=0.04, token_delay_s=0.005)
COMMON = ["--model", "mock", "--input-tokens", "4", "--output-tokens", "5", "--num-prompts", "4"]


def _quarters(values: list[float], stat: Any = statistics.fmean) -> tuple[float, float]:
    q = len(values) // 4
    return stat(values[:q]), stat(values[-q:])


def test_open_loop_above_capacity_shows_growing_latency(tmp_path: Path) -> None:
    with ThreadedMockServer(SERVER) as server:
        out = tmp_path / "open"
        # 100 req/s offered for 0.6 s against ~33 req/s of capacity
        rc = run_cli(
            [
                "--url",
                server.url,
                *COMMON,
                "--rate",
                "100",
                "--arrival",
                "constant",
                "--requests",
                "60",
                "--output-dir",
                str(out),
            ]
        )
        assert rc == 0
        closed = tmp_path / "closed"
        rc = run_cli(
            [
                "--url",
                server.url,
                *COMMON,
                "--concurrency",
                "2",
                "--requests",
                "40",
                "--output-dir",
                str(closed),
            ]
        )
        assert rc == 0
    summary, rows = read_outputs(out)
    assert_counts_match(summary, rows)
    assert all(r["ok"] for r in rows) and len(rows) == 60
    rows.sort(key=lambda r: r["intended_s"])
    e2e = [r["e2e_ms"] for r in rows]
    first, last = _quarters(e2e)
    # the backlog grows by ~2/3 of a service time per request: the last quarter waits far longer
    assert last > 3 * first
    # the growth is the server's queue, visible in its own prefill-queue report ...
    pq_first, pq_last = _quarters([r["prefill_queue_ms"] for r in rows])
    assert pq_last > pq_first + (last - first) / 2
    # ... not the client's: requests left on schedule (dispatch lag is a small part of the latency)
    assert summary["cells"][0]["dispatch_lag_ms"]["p50"] < (last - first) / 10
    # latency from the intended start is never below latency from the send
    assert all(r["e2e_ms"] >= r["e2e_from_send_ms"] for r in rows)

    closed_summary, closed_rows = read_outputs(closed)
    assert_counts_match(closed_summary, closed_rows)
    closed_e2e = [r["e2e_ms"] for r in sorted(closed_rows, key=lambda r: r["index"])]
    c_first, c_last = _quarters(closed_e2e, statistics.median)  # medians: robust to a CPU hiccup
    assert c_last < 2 * c_first  # a closed loop at capacity never builds a queue
    assert closed_summary["cells"][0]["latency_origin"] == "send"
    assert summary["cells"][0]["latency_origin"] == "intended_start"


def test_openai_compatible_stream_without_server_timings(tmp_path: Path) -> None:
    """vLLM/SGLang shape on /v1/completions: no perf_metrics, usage in a choices-less final chunk."""
    out = tmp_path / "vllm"
    with ThreadedMockServer(MockConfig(model="m", style="vllm", ttft_s=0.005)) as server:
        rc = run_cli(
            [
                "--url",
                server.url,
                "--endpoint",
                "/v1/completions",
                "--model",
                "m",
                "--input-tokens",
                "4",
                "--output-tokens",
                "6",
                "--concurrency",
                "3",
                "--requests",
                "9",
                "--goodput",
                "ttft:60000",
                "tpot:60000",
                "--output-dir",
                str(out),
            ]
        )
        assert rc == 0
        no_usage = tmp_path / "no-usage"
        rc = run_cli(
            [
                "--url",
                server.url,
                "--endpoint",
                "/v1/completions",
                "--model",
                "m",
                "--input-tokens",
                "4",
                "--output-tokens",
                "6",
                "--concurrency",
                "3",
                "--requests",
                "3",
                "--extra-body",
                '{"stream_options": null}',
                "--output-dir",
                str(no_usage),
            ]
        )
        assert rc == 0
    summary, rows = read_outputs(out)
    assert_counts_match(summary, rows)
    assert all(r["ok"] and r["output_tokens"] == 6 and r["output_tokens_source"] == "usage" for r in rows)
    assert all(len(r["itl_ms"]) == 5 for r in rows)  # one content chunk per token here
    cell = summary["cells"][0]
    assert cell["server"]["reported"] == 0 and cell["server"]["prefill_queue_ms"]["p50"] is None
    assert cell["goodput"]["good_requests"] == 9 and cell["output_tokens"] == 54
    _, rows = read_outputs(no_usage)
    # without a usage chunk, content chunks are the count (documented: chunk != token in general)
    assert all(r["output_tokens"] == 6 and r["output_tokens_source"] == "chunks" for r in rows)

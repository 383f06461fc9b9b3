"""Every load mode, end to end through `hotloop loadtest`, against the embedded deployment (a real
`hotloop serve deployment` subprocess with the tiny model): the run completes and summary.json's
counts match requests.jsonl row for row."""

from __future__ import annotations

from pathlib import Path

import pytest
from loadtest_helpers import assert_counts_match, read_outputs, run_cli

# Tiny requests: the embedded model runs on a shared 2-core CPU.
COMMON = [
    "--model",
    "tiny",
    "--input-tokens",
    "8",
    "--output-tokens",
    "3",
    "--ignore-eos",
    "--num-prompts",
    "4",
]

MODES = {
    "concurrency": (["--concurrency", "2", "--requests", "4", "--warmup", "1"], 1, "closed"),
    "rate": (["--rate", "4", "--arrival", "gamma", "--burstiness", "0.5", "--requests", "4"], 1, "open"),
    "adaptive": (["--adaptive", "--initial-window", "2", "--requests", "4"], 1, "closed"),
    "sweep-concurrency": (["--sweep-concurrency", "1,2", "--requests", "3"], 2, "closed"),
    "sweep-rate": (["--sweep-rate", "2,4", "--arrival", "constant", "--requests", "3"], 2, "open"),
}


@pytest.mark.parametrize("mode", list(MODES))
def test_load_mode_completes_with_matching_counts(
    mode: str, embedded_deployment: str, tmp_path: Path
) -> None:
    extra, cells, loop = MODES[mode]
    out = tmp_path / "out"
    rc = run_cli(["--url", embedded_deployment, *COMMON, *extra, "--output-dir", str(out)])
    assert rc == 0
    summary, rows = read_outputs(out)
    assert summary["status"] == "ok" and summary["mode"] == mode
    assert len(summary["cells"]) == cells
    assert_counts_match(summary, rows)
    per_cell = int(extra[extra.index("--requests") + 1])
    assert len(rows) == per_cell * cells and all(r["ok"] for r in rows)
    assert all(c["loop"] == loop for c in summary["cells"])
    assert all(r["output_tokens"] == 3 and r["input_tokens"] == 8 for r in rows)
    # the embedded deployment reports its queue and TTFT in the final chunk
    assert all(r["prefill_queue_ms"] is not None and r["server_ttft_ms"] is not None for r in rows)
    if loop == "open":
        assert all(r["intended_s"] is not None and r["dispatch_lag_ms"] is not None for r in rows)
        assert summary["cells"][0]["dispatch_lag_ms"]["count"] == per_cell
    else:
        assert all(r["intended_s"] is None and r["window"] is not None for r in rows)
        assert summary["cells"][0]["window"]["samples"] >= per_cell
    assert (out / "report.html").stat().st_size > 1000


def test_search_mode_with_compare_sweep(embedded_deployment: str, tmp_path: Path) -> None:
    out = tmp_path / "out"
    rc = run_cli(
        [
            "--url",
            embedded_deployment,
            "--endpoint",
            "/v1/completions",
            *COMMON,
            "--search",
            "concurrency",
            "--search-range",
            "1:2",
            "--compare-sweep",
            "2",
            "--goodput",
            "e2e:600000",
            "--requests",
            "3",
            "--output-dir",
            str(out),
        ]
    )
    assert rc == 0
    summary, rows = read_outputs(out)
    assert_counts_match(summary, rows)
    search = summary["search"]
    # a generous target: every probe passes, so the search climbs to the top of the range
    assert search["probes"] == [[1.0, True], [2.0, True]]
    assert search["answer"] == 2.0 and search["sweep_answer"] == 2.0
    assert [c["label"] for c in summary["cells"]] == [
        "sweep concurrency=2",
        "search concurrency=1",
        "search concurrency=2",
    ]
    html = (out / "report.html").read_text()
    assert "Adaptive search" in html and 'data-plot="throughput-vs-load:concurrency"' in html

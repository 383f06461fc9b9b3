"""The HTML report of a sweep + adaptive search renders in headless Chromium, offline, with its plots
(tests/headless.py drives Debian's chromium, which .ci/run installs)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from headless import CHROMIUM, chromium, png_pixels_vary
from loadtest_helpers import ThreadedMockServer, assert_counts_match, read_outputs, run_cli
from support.mock_server import MockConfig


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (installed by .ci/run)")
def test_report_renders_with_plots_in_headless_chromium(tmp_path: Path) -> None:
    out = tmp_path / "out"
    # capacity 2 x ~45 ms: ~40 req/s, so low rates pass an 150 ms E2E target and high ones fail
    with ThreadedMockServer(MockConfig(model="m", capacity=2, ttft_s=0.04, token_delay_s=0.002)) as server:
        rc = run_cli(
            [
                "--url",
                server.url,
                "--model",
                "m",
                "--input-tokens",
                "4",
                "--output-tokens",
                "3",
                "--search",
                "rate",
                "--search-range",
                "10:160",
                "--search-probes",
                "5",
                "--compare-sweep",
                "10,40,160",
                "--arrival",
                "constant",
                "--goodput",
                "e2e:150",
                "--min-good-fraction",
                "0.9",
                "--requests",
                "24",
                "--output-dir",
                str(out),
            ]
        )
    assert rc == 0
    summary, rows = read_outputs(out)
    assert_counts_match(summary, rows)
    search = summary["search"]
    assert search["answer"] is not None and search["sweep_answer"] in (10.0, 40.0)
    assert search["sweep_points"][0] == [10.0, True] and search["sweep_points"][-1] == [160.0, False]
    assert search["probes"][0] == [10.0, True] and not all(ok for _, ok in search["probes"])

    html = (out / "report.html").read_text()
    assert "<script" not in html and "<link" not in html and " src=" not in html  # self-contained

    profile = tmp_path / "profile"
    dom = chromium(["--dump-dom", (out / "report.html").as_uri()], profile).stdout
    plots = re.findall(r'<svg class="plot" data-plot="([^"]+)"', dom)
    cells = [c["label"] for c in summary["cells"]]
    for name in ("throughput-vs-load:rate", "tokens-vs-load:rate", "latency-vs-load:rate"):
        assert name in plots
    for cell in cells:
        for kind in (
            "latency-cdf",
            "hist-ttft_ms",
            "hist-tpot_ms",
            "hist-itl",
            "latency-time",
            "window-queue",
        ):
            assert f"{kind}:{cell}" in plots, (kind, cell)
    # every load plot draws its data (one polyline or point group per series), and marks both answers
    for svg in re.findall(r'<svg class="plot" data-plot="[a-z]+-vs-load:rate".*?</svg>', dom, re.S):
        assert svg.count('class="series"') >= 1
        assert "search: " in svg and "sweep: " in svg
    assert "Adaptive search" in dom and "search concurrency" not in dom

    shot = tmp_path / "report.png"
    chromium([f"--screenshot={shot}", "--window-size=1400,2200", (out / "report.html").as_uri()], profile)
    width, height, top_share = png_pixels_vary(shot.read_bytes())
    assert (width, height) == (1400, 2200)
    assert top_share < 0.99  # a blank page is > 0.999 the same byte; this one has charts and text

"""``hotloop loadtest`` against the real vLLM server: the vLLM dialect is picked from the endpoint and
the server's own queue time (``metrics.queue_time_ms``) reaches the summary and the table."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="session")]


async def test_loadtest_reports_vllm_queue_time(vllm: Any, tmp_path: Path) -> None:
    out = tmp_path / "lt"
    argv = [
        sys.executable,
        "-m",
        "engine.cli",
        "loadtest",
        "--no-progress",
        "--url",
        vllm.ref.attrs["base_url"],
    ]
    argv += [
        "--endpoint",
        "/v1/completions",
        "--model",
        "small",
        "--tokenizer",
        "small",
        "--concurrency",
        "4",
    ]
    argv += ["--requests", "12", "--output-tokens", "8", "--input-tokens", "32", "--output-dir", str(out)]
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, "COLUMNS": "200"},
    )
    stdout, _ = await asyncio.wait_for(proc.communicate(), 180)
    text = stdout.decode()
    assert proc.returncode == 0, text
    summary = json.loads((out / "summary.json").read_text())
    assert summary["target"]["dialect"] == "vllm"
    [cell] = summary["cells"]
    assert cell["completed"] == 12
    assert cell["server"]["reported"] == 12 and cell["server"]["prefill_queue_ms"]["count"] == 12
    assert cell["server"]["server_ttft_ms"]["p50"] is not None
    assert "queue p50" in text

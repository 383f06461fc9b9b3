"""`hotloop serve trainer` as a real subprocess: the shared tinker contract probe passes against it,
and it exits 0 on SIGTERM."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PROBE = (REPO / ".." / "shared" / "contracts" / "tinker_probe.py").resolve()


@contextmanager
def serve(bucket: Path) -> Iterator[tuple[subprocess.Popen[str], str]]:
    cmd = [
        sys.executable,
        "-m",
        "engine.cli",
        "serve",
        "trainer",
        "--port",
        "0",
        "--model",
        "tiny",
        "--bucket",
        str(bucket),
        "--threads",
        "1",
    ]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        deadline = time.monotonic() + 120
        line = ""
        while time.monotonic() < deadline and proc.poll() is None:
            ready, _, _ = select.select([proc.stdout], [], [], 1.0)
            if ready:
                line = proc.stdout.readline() if proc.stdout else ""
                break
        assert line.startswith("HOTLOOP_TRAINER_URL=http://127.0.0.1:"), line
        yield proc, line.strip().split("=", 1)[1]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


@pytest.mark.slow
def test_probe_passes_and_sigterm_exits_0(tmp_path: Path, tiny_model_dir: Path) -> None:
    if not PROBE.exists():
        pytest.skip(f"contract probe not found at {PROBE} (CI checks shared/ out beside the repo)")
    bucket = tmp_path / "bucket"
    env = {**os.environ, "TINKER_TELEMETRY": "0", "OMP_NUM_THREADS": "1"}
    with serve(bucket) as (proc, url):
        probe = subprocess.run(
            [sys.executable, str(PROBE), url, "--base-model", "tiny"],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert probe.returncode == 0, probe.stdout[-3000:] + probe.stderr[-3000:]
        assert "PROBE OK" in probe.stdout
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    # The default state dir is <bucket>/../state; the sampler snapshot landed in the bucket.
    assert list((tmp_path / "state").glob("*/weights/probe-state/optimizer.safetensors"))
    assert (bucket / "probe-sampler" / "manifest.json").exists()

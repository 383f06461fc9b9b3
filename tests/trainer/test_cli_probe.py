"""`hotloop serve trainer` as a real subprocess: the shared tinker contract probe passes against it,
and it exits 0 on SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from support.launch import TRAINER_URL_KEY, launched, serve_argv

REPO = Path(__file__).resolve().parents[2]
PROBE = (REPO / ".." / "shared" / "contracts" / "tinker_probe.py").resolve()


@pytest.mark.slow
def test_probe_passes_and_sigterm_exits_0(tmp_path: Path, tiny_model_dir: Path) -> None:
    if not PROBE.exists():
        pytest.skip(f"contract probe not found at {PROBE} (CI checks shared/ out beside the repo)")
    bucket = tmp_path / "bucket"
    env = {**os.environ, "TINKER_TELEMETRY": "0", "OMP_NUM_THREADS": "1"}
    argv = serve_argv("trainer", model="tiny", bucket=bucket, extra=["--threads", "1"])
    with launched(argv, TRAINER_URL_KEY, timeout_s=120, cwd=REPO) as server:
        assert server.before == (), server.before  # the URL line is the first stdout line
        assert server.line.startswith("HOTLOOP_TRAINER_URL=http://127.0.0.1:"), server.line
        proc = server.proc
        probe = subprocess.run(
            [sys.executable, str(PROBE), server.url, "--base-model", "tiny"],
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
    assert list(bucket.glob("*/probe-sampler/manifest.json"))  # in the run's folder

"""The demo end to end: wall time of ``hotloop run`` (no config: RL on the ``digits`` task with the
``small`` model, on an embedded stack the command starts and stops) and its first and last eval.

    .venv/bin/python benchmarks/bench_demo.py [--run-dir DIR]

Target: at most 300 s on 2 CPU cores, with the last evaluation clearly above the first.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", type=Path, default=None)
    args = parser.parse_args()
    run_dir = args.run_dir or Path(tempfile.mkdtemp(prefix="bench-demo-")) / "demo"
    env = {**os.environ, "TINKER_TELEMETRY": "0"}
    started = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "engine.cli", "run", "--no-progress", "--run-dir", str(run_dir)],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        check=False,
    )
    wall = time.perf_counter() - started
    print(proc.stdout.strip())
    if proc.returncode != 0:
        print(f"hotloop run failed with exit code {proc.returncode}", file=sys.stderr)
        return proc.returncode
    summary = json.loads((run_dir / "summary.json").read_text())
    evals = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    curve = ", ".join(f"{r['step']}: {r['score']:.3f}" for r in evals if r["kind"] == "eval")
    print(f"\nwall time of `hotloop run` (the demo): {wall:.1f}s (target <= 300s) -> ratio {wall / 300:.2f}")
    print(
        f"steps: {summary['steps']}  eval first {summary['eval_score_first']:.3f}"
        f" -> last {summary['eval_score_last']:.3f}"
    )
    print(f"eval curve (step: score): {curve}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

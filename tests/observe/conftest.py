"""Seeing a run: its report, its metric sinks, its Prometheus metrics. Runs are made fast on the fake
backends of tests/states (real states, real orchestrator, no processes)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "states"))

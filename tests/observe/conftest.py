"""Seeing a run: its report, its metric sinks, its Prometheus metrics. Runs are made fast on the
fake backends of tests/support/fakes.py (real states, real orchestrator, no processes)."""

from __future__ import annotations

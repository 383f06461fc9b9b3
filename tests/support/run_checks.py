"""Checks of a finished run's files shared by the tests of whole runs, on fake planes (tests/states,
tests/recovery) and on the embedded stack (tests/e2e_run, tests/vllm): every step exactly once, and
no trained batch staler than k."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from engine.journal import read_journal
from engine.run.rundir import RunDir


def step_rows(run_dir: Path) -> list[dict[str, Any]]:
    """The ``step`` rows of the run's metrics.jsonl, in order."""
    return [r for r in RunDir(run_dir).read_rows() if r["kind"] == "step"]


def check_exactly_once(run_dir: Path, max_steps: int) -> list[dict[str, Any]]:
    """Each step's row appears once, in order, and the trainer applied exactly one step per row."""
    steps = step_rows(run_dir)
    assert [r["step"] for r in steps] == list(range(1, max_steps + 1))
    assert [r["optimizer_steps"] for r in steps] == list(range(1, max_steps + 1))
    return steps


def snapshot_steps(records: list[dict[str, Any]]) -> dict[str | None, int]:
    """identity -> step, from every snapshot the journal committed (None: the base model, step 0)."""
    steps: dict[str | None, int] = {None: 0}
    for rec in records:
        for fact in rec.get("records") or [] if rec["event"] == "exit" else []:
            if fact["kind"] == "snapshot":
                steps[fact["identity"]] = fact["step"]
    return steps


def check_staleness(run_dir: Path, k: int) -> list[dict[str, Any]]:
    """No trained batch staler than k: each identity a step's row trained on is a snapshot the
    journal committed for a step at most k behind the learner (no identity: the base model), the row
    reports a staleness of at most k, and it dropped no stale rollout. Returns the step rows."""
    steps = snapshot_steps(read_journal(run_dir / "journal.jsonl"))
    trained = step_rows(run_dir)
    for row in trained:
        identities = row["snapshot_identity"]
        for identity in identities if isinstance(identities, list) else [identities]:
            assert row["step"] - 1 - steps[identity] <= k, (row, identity)
        assert row["staleness"] <= k and row["stale_dropped"] == 0, row
    return trained

"""Reading a run directory for its report: tolerant of a run that is still writing it.

A live run appends to ``journal.jsonl`` (fsync'd records), ``metrics.jsonl`` and
``checkpoints.jsonl`` (plain appends) while this reads them, so the last line of any of them may be
torn; it is skipped. A damaged line elsewhere is skipped too and named in the report's notes: a
report shows what it can, it never refuses a run directory.
"""

from __future__ import annotations

import json
import os
import platform
import sys
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml

from engine.journal import JournalCorrupt, read_journal
from engine.report.timeline import Timeline, read_timeline
from engine.run.rundir import CONFIG, JOURNAL, LEDGER, METRICS, SUMMARY

# Distributions whose versions explain a run's numbers (read from package metadata: nothing imported).
VERSIONED = ("hotloop", "torch", "tinker", "transformers", "tensorboard", "wandb")


@dataclass
class RunView:
    path: Path
    label: str
    config_text: str
    config: dict[str, Any]
    rows: list[dict[str, Any]]  # metrics.jsonl
    ledger: list[dict[str, Any]]  # checkpoints.jsonl
    summary: dict[str, Any] | None
    timeline: Timeline
    problems: list[str] = field(default_factory=list)

    @property
    def steps(self) -> list[dict[str, Any]]:
        return [r for r in self.rows if r.get("kind") == "step"]

    @property
    def evals(self) -> list[dict[str, Any]]:
        return [r for r in self.rows if r.get("kind") == "eval"]


def read_jsonl(path: Path, problems: list[str]) -> list[dict[str, Any]]:
    """The JSON objects of a JSONL file (none if it is missing); a torn last line is skipped silently,
    any other unreadable line is skipped and noted."""
    try:
        lines = path.read_bytes().split(b"\n")
    except FileNotFoundError:
        return []
    out: list[dict[str, Any]] = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except ValueError:
            obj = None
        if isinstance(obj, dict):
            out.append(obj)
        elif i != len(lines) - 1:  # the piece after the last newline is a torn append: expected
            problems.append(f"{path.name}: line {i + 1} is not a JSON object (skipped)")
    return out


def _journal(path: Path, problems: list[str]) -> list[dict[str, Any]]:
    try:
        return read_journal(path)
    except JournalCorrupt as exc:
        problems.append(str(exc))
        return read_jsonl(path, problems)


def load_run(path: str | os.PathLike[str], *, now: float | None = None) -> RunView:
    rd = Path(path).resolve()
    problems: list[str] = []
    try:
        config_text = (rd / CONFIG).read_text()
    except FileNotFoundError:
        config_text = ""
        problems.append(f"{CONFIG}: missing (not a run directory?)")
    try:
        config = yaml.safe_load(config_text) or {}
    except yaml.YAMLError as exc:
        config = {}
        problems.append(f"{CONFIG}: not valid YAML ({exc})")
    if not isinstance(config, dict):
        config = {}
    records = _journal(rd / JOURNAL, problems)
    summary: dict[str, Any] | None = None
    try:
        loaded = json.loads((rd / SUMMARY).read_text())
        summary = loaded if isinstance(loaded, dict) else None
    except (FileNotFoundError, ValueError):
        summary = None
    limits = config.get("limits") if isinstance(config.get("limits"), dict) else {}
    limit = limits.get("state_timeout_s", 3600.0) if isinstance(limits, dict) else 3600.0
    timeline = read_timeline(records, now=now, open_limit_s=float(limit))
    run_id = next((str(r["run_id"]) for r in records if r.get("event") == "start" and r.get("run_id")), "")
    return RunView(
        path=rd,
        label=run_id or str(config.get("run_id") or rd.name),
        config_text=config_text,
        config=config,
        rows=read_jsonl(rd / METRICS, problems),
        ledger=read_jsonl(rd / LEDGER, problems),
        summary=summary,
        timeline=timeline,
        problems=problems,
    )


def distinct_labels(runs: list[RunView]) -> None:
    """Two runs of one report need different names: fall back to the directory, then a number."""
    if len({r.label for r in runs}) < len(runs):
        for r in runs:
            r.label = r.path.name
    if len({r.label for r in runs}) < len(runs):
        for i, r in enumerate(runs, start=1):
            r.label = f"{r.label} ({i})"


def environment() -> list[tuple[str, str]]:
    """The versions of the process writing the report (at the end of a run: the run's own)."""
    out = [("python", sys.version.split()[0]), ("platform", platform.platform())]
    for name in VERSIONED:
        try:
            out.append((name, metadata.version(name)))
        except metadata.PackageNotFoundError:
            out.append((name, "not installed"))
    return out

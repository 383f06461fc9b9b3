"""The run directory: everything needed to inspect, reproduce and resume one run.

    config.yaml          the validated config (secrets are never stored: only env var names)
    journal.jsonl        the append-only source of truth (engine.journal)
    metrics.jsonl        one row per committed step (kind "step") and per evaluation (kind "eval")
    checkpoints.jsonl    the ledger: full training states, sampler snapshots, syncs
    eval_prompts.jsonl   the exact evaluation prompt set; eval rows carry its sha256
    summary.json         written when the run ends
    stack/               the embedded stack's state (embedded backend only)

metrics.jsonl and checkpoints.jsonl are derived from the journal: appended (not fsync'd) after each
committed state exit, and rewritten atomically from the replayed journal when a run resumes.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

import yaml

from engine.config import RunConfig, dump_config, validate_config
from engine.errors import ConfigError
from engine.files import write_atomic
from engine.journal import read_journal
from engine.run.replay import Replay, replay

CONFIG = "config.yaml"
JOURNAL = "journal.jsonl"
METRICS = "metrics.jsonl"
LEDGER = "checkpoints.jsonl"
EVAL_PROMPTS = "eval_prompts.jsonl"
SUMMARY = "summary.json"


def _line(obj: dict[str, Any]) -> bytes:
    return (json.dumps(obj, separators=(",", ":"), default=str) + "\n").encode()


class RunDir:
    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path).resolve()

    def file(self, name: str) -> Path:
        return self.path / name

    @property
    def journal_path(self) -> Path:
        return self.file(JOURNAL)

    def exists(self) -> bool:
        return self.file(CONFIG).exists()

    def read_config(self) -> RunConfig:
        try:
            data = yaml.safe_load(self.file(CONFIG).read_text())
        except FileNotFoundError:
            raise ConfigError(f"run_dir: {self.path} is not a run directory (no {CONFIG})") from None
        return validate_config(data)

    def write_config(self, config: RunConfig) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        write_atomic(
            self.file(CONFIG), yaml.safe_dump(dump_config(config), sort_keys=False).encode(), durable=True
        )

    def replay(self) -> Replay:
        return replay(read_journal(self.journal_path))

    def rebuild_derived(self, state: Replay) -> None:
        """Rewrite metrics.jsonl and the ledger to exactly what the journal committed."""
        write_atomic(self.file(METRICS), b"".join(_line(r) for r in state.rows))  # rebuilt from the journal
        write_atomic(self.file(LEDGER), b"".join(_line(r) for r in state.ledger))

    def append(self, name: str, rows: list[dict[str, Any]]) -> None:
        """Append rows to a derived file (called after the journal committed them; blocking I/O,
        so callers run it in a thread). Not fsync'd: a resumed run rebuilds it from the journal."""
        if not rows:
            return
        with open(self.file(name), "ab") as fh:
            fh.write(b"".join(_line(r) for r in rows))

    def store_eval_prompts(self, rows: list[dict[str, str]], sha256: str) -> None:
        """Write the eval prompt set once; a resumed run must find the very same bytes."""
        data = "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows).encode()
        assert hashlib.sha256(data).hexdigest() == sha256
        path = self.file(EVAL_PROMPTS)
        if path.exists():
            found = hashlib.sha256(path.read_bytes()).hexdigest()
            if found != sha256:
                raise ConfigError(
                    f"eval: stored prompt set {path} has sha256 {found}, the task now gives {sha256}"
                )
            return
        write_atomic(path, data, durable=True)

    def read_rows(self, name: str = METRICS) -> list[dict[str, Any]]:
        path = self.file(name)
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def write_summary(self, summary: dict[str, Any]) -> None:
        write_atomic(
            self.file(SUMMARY), (json.dumps(summary, indent=2, default=str) + "\n").encode(), durable=True
        )


def default_run_dir(config: RunConfig) -> Path:
    return Path("runs") / f"{config.recipe}-{Path(config.task).stem}-{time.strftime('%Y%m%d-%H%M%S')}"

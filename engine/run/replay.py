"""Resume: what a run directory's journal says has been committed, as a pure function.

The commit protocol (why a killed run resumes with nothing lost and nothing repeated):

1. A fact counts once the exit record of the state that produced it is fsync'd in the journal
   (``Runner``). TRAINING commits the step's metrics row; CHECKPOINTING the full training state
   (``save_state`` path, weights + optimizer) and/or a sampler snapshot; SYNCING the identity the
   deployment was verified to serve; EVALUATING the eval row. metrics.jsonl and checkpoints.jsonl
   are written after the exit record, so they can lag the journal but never lead it.
2. A resumed run restarts from the last committed full training state, step ``s``: the trainer
   loads it with its optimizer into a new model (``TrainingSession.from_state``), whose optimizer
   step counter is ``s``. Optimizer steps applied after ``s`` by the dead process belong to the old
   model, which is abandoned, so no optimizer step of the resumed model is ever applied twice.
3. The resumed run journals ``{"event": "start", "resume_from": s}``. Replay drops every fact of
   a step after ``s`` that precedes that marker (those steps are redone and committed again), so
   each step's metrics row appears exactly once. metrics.jsonl and the ledger are rewritten from the
   replayed facts (atomically) before the run continues.
4. The deployment's identity is read back, never assumed: if it serves the snapshot committed for
   step ``s`` (or the base weights at step 0), the run continues; otherwise it owes a sync
   (``force_sync``) before sampling or evaluating.
5. Volatile work (a rollout batch, an uncommitted step) is simply redone; data for step k is a
   deterministic function of (seed, k), so a redone step trains on the same prompts. The rollout
   machine of asynchronous RL journals ``{"event": "rollout"}`` records, which commit nothing and
   are ignored here: its buffered and in-flight batches are sampled again.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from engine.journal import Record
from engine.run.records import (
    EvalCommitted,
    ResourcesAcquired,
    RunFact,
    SnapshotSaved,
    StateSaved,
    StepCommitted,
    Synced,
    fact_from_json,
)


@dataclass
class Replay:
    generation: int = 0  # how many times the run has been started (0: never)
    started: bool = False
    finished: bool = False
    last_error: str | None = None
    resources: ResourcesAcquired | None = None
    step: int = 0  # the step to resume at: the last committed full training state
    state_path: str | None = None  # its save_state path (None: step 0, the base model)
    optimizer_steps: int = 0
    evaluated_step: int = -1
    synced_identity: str | None = None  # identity committed as served at ``step``
    synced_known: bool = False  # False: no sync was committed at ``step``
    rows: list[dict[str, Any]] = field(default_factory=list)  # metrics rows to keep, in order
    ledger: list[dict[str, Any]] = field(default_factory=list)  # checkpoint ledger entries to keep


def _fact_step(fact: RunFact) -> int:
    return fact.step if not isinstance(fact, ResourcesAcquired) else 0


def replay(records: list[Record]) -> Replay:
    out = Replay()
    facts: list[RunFact] = []
    for rec in records:
        event = rec.get("event")
        if event == "start":
            out.generation = int(rec.get("generation", out.generation + 1))
            out.started = True
            out.finished = False
            resume_from = rec.get("resume_from")
            if resume_from is not None:
                keep = int(resume_from)
                facts = [f for f in facts if isinstance(f, ResourcesAcquired) or _fact_step(f) <= keep]
        elif event == "done":
            out.finished = True
        elif event == "exit":
            if rec.get("next") == "failed":
                out.last_error = str(rec.get("error"))
            facts.extend(fact_from_json(r) for r in rec.get("records") or [])
    states = [f for f in facts if isinstance(f, StateSaved)]
    if states:
        out.step, out.state_path, out.optimizer_steps = (
            states[-1].step,
            states[-1].path,
            states[-1].optimizer_steps,
        )
    s = out.step
    for f in facts:
        if isinstance(f, ResourcesAcquired):
            out.resources = f
            continue
        if _fact_step(f) > s:
            continue  # committed by the dead process after its last full state: redone
        if isinstance(f, StepCommitted | EvalCommitted):
            out.rows.append(dict(f.row))
            if isinstance(f, EvalCommitted):
                out.evaluated_step = max(out.evaluated_step, f.step)
        elif isinstance(f, StateSaved | SnapshotSaved | Synced):
            out.ledger.append(f.to_json())
            if isinstance(f, Synced) and f.step == s:
                out.synced_identity, out.synced_known = f.identity, True
    return out

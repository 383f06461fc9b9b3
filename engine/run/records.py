"""The facts a run journals, as typed values: written by the states, replayed by engine.run.replay,
shown by the progress display and copied into the derived files (metrics.jsonl, checkpoints.jsonl).

Each fact is a frozen dataclass with a ``kind`` and a JSON form (``to_json``/``fact_from_json``), the
only place a fact's shape is defined. A state calls ``ctx.record(fact)``; the Runner commits it with
the state's exit record. Metrics rows (``StepCommitted.row``, ``EvalCommitted.row``) are built from
typed values by the states and stored as the mapping that becomes one line of metrics.jsonl, so a
row keeps every field it was written with.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Self

from engine.backends.base import CheckpointType, DeploymentRef, TrainerRef
from engine.errors import FatalError


class JournalCorruptFact(FatalError):
    """A committed fact the journal cannot be read as (a damaged or foreign journal)."""


@dataclass(frozen=True)
class ResourcesAcquired:
    """REQUESTING: the trainer and deployment this run uses (a resumed run attaches to them)."""

    kind: ClassVar[str] = "resources"
    trainer: TrainerRef
    deployment: DeploymentRef

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "trainer": self.trainer.to_json(), "deployment": self.deployment.to_json()}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ResourcesAcquired:
        if "trainer" not in data:  # the journals of hotloop 0.1 named the Fireworks resources directly
            return cls(
                TrainerRef("control_plane", str(data["job_id"]), {"job_name": str(data.get("job_name", ""))}),
                DeploymentRef("control_plane", str(data["deployment_id"])),
            )
        return cls(TrainerRef.from_json(data["trainer"]), DeploymentRef.from_json(data["deployment"]))


@dataclass(frozen=True)
class Connected:
    """WAITING: the session connected; what the deployment was read back to serve."""

    kind: ClassVar[str] = "connected"
    step: int
    served_identity: str | None
    in_step: bool
    model_id: str

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "step": self.step, "served_identity": self.served_identity,
                "in_step": self.in_step, "model_id": self.model_id}  # fmt: skip

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Connected:
        return cls(
            int(data["step"]), data.get("served_identity"), bool(data["in_step"]), str(data["model_id"])
        )


@dataclass(frozen=True)
class _RowFact:
    """A fact whose payload is one metrics.jsonl row."""

    kind: ClassVar[str]
    row: Mapping[str, Any]

    @property
    def step(self) -> int:
        return int(self.row["step"])

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "row": dict(self.row)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Self:
        return cls(dict(data["row"]))


@dataclass(frozen=True)
class StepCommitted(_RowFact):
    """TRAINING: one optimizer step and its metrics row."""

    kind: ClassVar[str] = "step"


@dataclass(frozen=True)
class EvalCommitted(_RowFact):
    """EVALUATING: the score of the stored prompt set on the verified snapshot."""

    kind: ClassVar[str] = "eval"


@dataclass(frozen=True)
class StateSaved:
    """CHECKPOINTING: the full training state (weights + optimizer) a resumed run restores."""

    kind: ClassVar[str] = "state"
    step: int
    path: str
    optimizer_steps: int

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "step": self.step,
            "path": self.path,
            "optimizer_steps": self.optimizer_steps,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> StateSaved:
        step = int(data["step"])
        return cls(step, str(data["path"]), int(data.get("optimizer_steps", step)))


@dataclass(frozen=True)
class SnapshotSaved:
    """CHECKPOINTING: a sampler snapshot for the deployment (base or delta against ``parent``)."""

    kind: ClassVar[str] = "snapshot"
    step: int
    identity: str
    checkpoint_type: CheckpointType
    parent: str | None = None
    size_bytes: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "step": self.step, "identity": self.identity,
                "checkpoint_type": self.checkpoint_type, "parent": self.parent,
                "size_bytes": self.size_bytes}  # fmt: skip

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> SnapshotSaved:
        kind: CheckpointType = "delta" if data.get("checkpoint_type") == "delta" else "base"
        size = data.get("size_bytes")
        return cls(int(data["step"]), str(data["identity"]), kind, data.get("parent"),
                   int(size) if size is not None else None)  # fmt: skip


@dataclass(frozen=True)
class Synced:
    """SYNCING: the deployment was verified to serve ``identity`` (the snapshot of ``step``)."""

    kind: ClassVar[str] = "sync"
    step: int
    identity: str | None
    checkpoint_type: CheckpointType = "base"
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "step": self.step, "identity": self.identity,
                "checkpoint_type": self.checkpoint_type, "seconds": self.seconds}  # fmt: skip

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Synced:
        kind: CheckpointType = "delta" if data.get("checkpoint_type") == "delta" else "base"
        return cls(int(data["step"]), data.get("identity"), kind, float(data.get("seconds", 0.0)))


@dataclass(frozen=True)
class RolloutsSampled:
    """The rollout machine's SAMPLING (async RL): a batch for ``step`` went into the buffer.

    Journaled in the rollout machine's exit record, which commits nothing (the batch is volatile): it
    is there so a report can draw the overlap and a reader can see which policies sampled what.
    """

    kind: ClassVar[str] = "rollouts"
    step: int
    policy_versions: tuple[int, ...]  # every version that generated a rollout of the batch
    identities: tuple[str | None, ...]
    samples: int
    seconds: float

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "step": self.step, "policy_versions": list(self.policy_versions),
                "identities": list(self.identities), "samples": self.samples,
                "seconds": self.seconds}  # fmt: skip

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RolloutsSampled:
        return cls(
            int(data["step"]),
            tuple(int(v) for v in data["policy_versions"]),
            tuple(data["identities"]),
            int(data["samples"]),
            float(data.get("seconds", 0.0)),
        )


RunFact = (
    ResourcesAcquired | Connected | StepCommitted | EvalCommitted | StateSaved | SnapshotSaved | Synced
    | RolloutsSampled
)  # fmt: skip
_FACT_TYPES = (
    ResourcesAcquired, Connected, StepCommitted, EvalCommitted, StateSaved, SnapshotSaved, Synced,
    RolloutsSampled,
)  # fmt: skip
_KINDS: dict[str, Any] = {cls.kind: cls for cls in _FACT_TYPES}
LEDGER_KINDS = frozenset({StateSaved.kind, SnapshotSaved.kind, Synced.kind})


def fact_from_json(data: Mapping[str, Any]) -> RunFact:
    """The typed fact of one committed record; an unknown kind or a missing field is named."""
    kind = data.get("kind")
    cls = _KINDS.get(str(kind))
    if cls is None:
        raise JournalCorruptFact(f"journal fact of unknown kind {kind!r}")
    try:
        fact: RunFact = cls.from_json(data)
    except (KeyError, TypeError, ValueError) as exc:
        raise JournalCorruptFact(f"journal fact {kind!r} is malformed ({type(exc).__name__}: {exc})") from exc
    return fact

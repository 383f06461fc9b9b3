"""``PolicyVersions``: which policy version (the step whose weights) generated a completion.

A run knows the step of every snapshot it wrote (``SnapshotSaved``, committed or just written by
CHECKPOINTING, always before any completion can name it) and, for a deployment that drains around
hot-loads, which identity it verified served in each of the sampler's drain epochs (WAITING for
epoch 0, each SYNCING for the epoch its drain opened). A completion's version is then:

- on a deployment that names the identity per completion (``per_completion_identity``): the step of
  that identity; no identity is the deployment's initial weights, the untouched base model, step 0;
- otherwise: the step of the identity verified for the epoch the completion ran in (the drain gate
  guarantees it started and finished within that epoch).

An identity the run never wrote (another writer's hot-load, an abandoned snapshot of a crashed
process) or an epoch with no verified identity is a ``FatalError``: such a completion is never
trained. Pure bookkeeping, no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from engine.errors import FatalError


class UnknownPolicy(FatalError):
    """A completion's generating weights are not a snapshot this run wrote (or cannot be known)."""


@dataclass
class PolicyVersions:
    steps: dict[str, int] = field(default_factory=dict)  # snapshot identity -> step
    epochs: dict[int, str | None] = field(default_factory=dict)  # drain epoch -> identity served

    @classmethod
    def from_ledger(cls, ledger: Iterable[Mapping[str, Any]]) -> PolicyVersions:
        """From the committed checkpoint ledger (snapshot and sync entries) a resumed run keeps."""
        out = cls()
        for entry in ledger:
            if entry.get("kind") in ("snapshot", "sync") and entry.get("identity"):
                out.snapshot(str(entry["identity"]), int(entry["step"]))
        return out

    def snapshot(self, identity: str, step: int) -> None:
        known = self.steps.get(identity)
        if known is not None and known != step:
            raise FatalError(f"snapshot {identity!r} is recorded for steps {known} and {step}")
        self.steps[identity] = step

    def serves(self, epoch: int, identity: str | None) -> None:
        """The deployment was verified to serve ``identity`` for the attempts of ``epoch``."""
        self.epochs[epoch] = identity

    def step_of(self, identity: str | None) -> int:
        if identity is None:
            return 0
        step = self.steps.get(identity)
        if step is None:
            raise UnknownPolicy(
                f"a completion came from snapshot {identity!r}, which this run did not write "
                "(another writer hot-loaded the deployment, or it is a crashed process's abandoned snapshot)"
            )
        return step

    def resolve(self, reported: str | None, epoch: int, *, per_completion: bool) -> tuple[str | None, int]:
        """(identity, step) of the weights that generated one completion."""
        if per_completion:
            return reported, self.step_of(reported)
        if epoch not in self.epochs:
            raise UnknownPolicy(
                f"a completion ran in drain epoch {epoch}, for which no served identity was verified"
            )
        identity = self.epochs[epoch]
        if reported is not None and reported != identity:
            raise UnknownPolicy(
                f"a completion names snapshot {reported!r}, but {identity!r} was verified for its "
                f"epoch {epoch}"
            )
        return identity, self.step_of(identity)

"""The base/delta chain decision, as pure functions over an immutable state.

``WeightSyncer`` does the I/O (save, hot-load, read back); this module decides what to save and what
each hot-load is relative to, so every branch can be tested without a trainer or a deployment.

Rules (Fireworks' ``_snapshot_chain`` plus the BYOT guidance, made strict):

* LoRA sessions always save ``base`` (merged weights) and never send incremental metadata.
* A delta is taken against the identity the deployment *really holds* (last read back or last
  successfully hot-loaded), and only if that identity is one this chain wrote: a snapshot from
  another session or trainer, or an unknown deployment state, forces ``base``.
* The first snapshot is ``base``; after ``full_every`` deltas on top of a base the next is ``base``.
* A failed hot-load forces ``base`` until a ``base`` hot-load succeeds, and makes the deployment's
  identity unknown until it is read back again.
* An explicit ``checkpoint_type`` override wins, except that a ``delta`` override with no usable
  parent is refused (it would reference something the deployment never loaded).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Literal

CheckpointType = Literal["base", "delta"]


class ChainError(ValueError):
    """A chain request that cannot be honoured (e.g. a delta with nothing to diff against)."""


@dataclass(frozen=True)
class ChainState:
    """What the syncer knows about the chain and the deployment.

    ``depth`` maps each snapshot this chain saved to its distance from its base (0 for a base).
    ``held`` is the identity the deployment holds (None: nothing loaded, or the initial weights);
    meaningful only when ``held_known``.
    """

    lora: bool = False
    full_every: int = 20
    held: str | None = None
    held_known: bool = False
    force_base: bool = False
    depth: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))
    parents: Mapping[str, str | None] = field(default_factory=lambda: MappingProxyType({}))

    def __post_init__(self) -> None:
        if self.full_every < 0:
            raise ChainError(f"full_every must be >= 0, got {self.full_every}")


@dataclass(frozen=True)
class SavePlan:
    checkpoint_type: CheckpointType
    parent: str | None  # the snapshot a delta is taken against; None for base


# Events: what happened at the edges.
@dataclass(frozen=True)
class Observed:
    """The deployment's current identity was read back (None: no snapshot loaded)."""

    identity: str | None


@dataclass(frozen=True)
class Saved:
    identity: str
    checkpoint_type: CheckpointType
    parent: str | None


@dataclass(frozen=True)
class HotloadSucceeded:
    identity: str


@dataclass(frozen=True)
class HotloadFailed:
    identity: str


@dataclass(frozen=True)
class Reset:
    """A new trainer (or bucket) is attached: nothing this chain saved can be referenced any more."""


Event = Observed | Saved | HotloadSucceeded | HotloadFailed | Reset


def needs_readback(state: ChainState) -> bool:
    """True when the deployment's identity must be read back before a decision relies on it."""
    return not state.held_known


def plan_save(state: ChainState, override: CheckpointType | None = None) -> SavePlan:
    """Which checkpoint type the next save uses, and the parent of a delta."""
    if override not in (None, "base", "delta"):
        raise ChainError(f"checkpoint_type must be 'base' or 'delta', got {override!r}")
    if state.lora:
        # Adapters are standalone artifacts: incremental loads of LoRA snapshots are not a thing.
        return SavePlan("base", None)
    parent = _delta_parent(state)
    if override == "base":
        return SavePlan("base", None)
    if override == "delta":
        if parent is None:
            raise ChainError(
                "checkpoint_type='delta' refused: the deployment does not hold a snapshot of this chain "
                f"(held={state.held!r}, known={state.held_known}); save a base first"
            )
        return SavePlan("delta", parent)
    if parent is None or state.force_base or state.depth[parent] + 1 > state.full_every:
        return SavePlan("base", None)
    return SavePlan("delta", parent)


def _delta_parent(state: ChainState) -> str | None:
    if not state.held_known or state.held is None or state.held not in state.depth:
        return None
    return state.held


def load_parent(state: ChainState, identity: str, checkpoint_type: CheckpointType) -> str | None:
    """What a hot-load of ``identity`` is relative to: a delta's recorded parent (its bytes only decode
    against that), or for a delta this chain did not save, what the deployment holds. None: a full
    load (a base, or any LoRA snapshot). How the deployment is told is the backend's business."""
    if checkpoint_type not in ("base", "delta"):
        raise ChainError(f"checkpoint_type must be 'base' or 'delta', got {checkpoint_type!r}")
    if checkpoint_type == "base" or state.lora:
        return None
    parent = state.parents.get(identity) if identity in state.parents else state.held
    if parent is None:
        raise ChainError(f"cannot hot-load delta {identity!r}: its parent snapshot is unknown")
    return parent


def apply(state: ChainState, event: Event) -> ChainState:
    """The state after ``event``."""
    if isinstance(event, Observed):
        return replace(state, held=event.identity, held_known=True)
    if isinstance(event, Saved):
        if event.checkpoint_type == "base":
            d = 0
        else:
            if event.parent is None or event.parent not in state.depth:
                raise ChainError(f"delta {event.identity!r} saved against unknown parent {event.parent!r}")
            d = state.depth[event.parent] + 1
        return replace(
            state,
            depth=MappingProxyType({**state.depth, event.identity: d}),
            parents=MappingProxyType({**state.parents, event.identity: event.parent}),
        )
    if isinstance(event, HotloadSucceeded):
        saved_base = state.depth.get(event.identity) == 0
        return replace(
            state,
            held=event.identity,
            held_known=True,
            force_base=state.force_base and not saved_base,
        )
    if isinstance(event, HotloadFailed):
        # The deployment may hold the old snapshot, the new one, or nothing: read it back.
        return replace(state, held=None, held_known=False, force_base=True)
    if isinstance(event, Reset):
        return ChainState(lora=state.lora, full_every=state.full_every, force_base=True)
    raise ChainError(f"unknown chain event {event!r}")

"""Weights: the sampler snapshot format (``engine.weights.snapshot``), the base/delta chain decision
(``engine.weights.chain``) and ``WeightSyncer``.

``WeightSyncer`` is imported lazily so that processes which only read or write snapshots (the
embedded trainer and deployment) do not import the control-plane client.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from engine.weights.syncer import HotloadFailedError, WeightSyncer

__all__ = ["HotloadFailedError", "WeightSyncer"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from engine.weights import syncer

        return getattr(syncer, name)
    raise AttributeError(f"module 'engine.weights' has no attribute {name!r}")

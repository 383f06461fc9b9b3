"""Tinker's side of the seam: ``TrainingSession`` over the official tinker client, safe inside a
running event loop (engine.backends.tinker.session), and the edge where tinker's futures and errors
become hotloop's (engine.backends.tinker.edge). Imported lazily: tinker takes a second to import."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from engine.backends.tinker.edge import tinker_credentials
    from engine.backends.tinker.session import TrainingSession

__all__ = ["TrainingSession", "tinker_credentials"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from engine.backends.tinker import session

        return getattr(session, name)
    raise AttributeError(f"module 'engine.backends.tinker' has no attribute {name!r}")

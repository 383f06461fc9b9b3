"""The embedded trainer: a Tinker-wire-compatible training service on PyTorch (aiohttp).

The official ``tinker`` client talks to it unmodified: ``tinker.ServiceClient(base_url=URL)``, and so
does Fireworks' training client (``FiretitanServiceClient``), in its JSON dialect
(engine.local.trainer.fireworks_routes), on the same implementation.
Start it with ``hotloop serve trainer`` or in-process with :class:`TrainerServer` /
:func:`serve_in_thread`.
"""

from engine.local.trainer.config import TrainerConfig
from engine.local.trainer.server import ServerThread, TrainerServer, serve_in_thread

__all__ = ["ServerThread", "TrainerConfig", "TrainerServer", "serve_in_thread"]

"""From a run config to the two backends it drives (the run's composition root).

``trainer.kind`` and ``deployment.kind`` pick the adapters. A ``control_plane`` plane uses the
Fireworks-shaped control plane of ``backend``: hotloop's embedded stack (started here, under the run
directory, and stopped with the run), a remote one (Fireworks or ``hotloop up``), or a connection the
caller passes (tests and services that already run a stack). The embedded stack starts only when a
plane needs it.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

from engine.backends.base import DeploymentBackend, Planes, TrainerBackend
from engine.config import RunConfig
from engine.errors import ConfigError


@dataclass
class ControlPlaneConnection:
    """How to reach a Fireworks-shaped control plane (an embedded stack or a remote one)."""

    base_url: str
    api_key: str
    account_id: str | None = None
    inference_url: str | None = None
    hotload_api_url: str | None = None
    trainer_gateway_url: str | None = None

    def __repr__(self) -> str:  # never show the key
        return f"ControlPlaneConnection(base_url={self.base_url!r})"


def needs_control_plane(config: RunConfig) -> bool:
    return config.trainer.kind == "control_plane" or config.deployment.kind == "control_plane"


async def _control_plane(
    config: RunConfig, run_dir: Path, stack: contextlib.AsyncExitStack, given: ControlPlaneConnection | None
) -> ControlPlaneConnection:
    if given is not None:
        return given
    backend = config.backend
    if backend.kind == "remote":
        assert backend.base_url is not None  # the config validator requires it
        return ControlPlaneConnection(
            base_url=backend.base_url,
            api_key=backend.api_key(),
            account_id=backend.account_id,
            inference_url=backend.inference_url,
            hotload_api_url=backend.hotload_api_url,
            trainer_gateway_url=backend.trainer_gateway_url,
        )
    from engine.local.stack import EmbeddedStack

    embedded = await stack.enter_async_context(EmbeddedStack(run_dir / "stack"))
    return ControlPlaneConnection(
        base_url=embedded.base_url, api_key=embedded.api_key, account_id=embedded.account_id
    )


def _tokenizer_loader() -> object:
    # Embedded model names and local HF directories load offline; anything else falls back to
    # tinker's (Hugging Face) lookup inside the session.
    from engine.local.models import load_tokenizer

    return load_tokenizer


async def open_planes(
    config: RunConfig,
    run_dir: Path,
    stack: contextlib.AsyncExitStack,
    connection: ControlPlaneConnection | None = None,
) -> Planes:
    """Build the run's backends; everything opened is closed by ``stack``."""
    conn = await _control_plane(config, run_dir, stack, connection) if needs_control_plane(config) else None
    trainer: TrainerBackend
    deployment: DeploymentBackend
    if config.trainer.kind == "control_plane":
        assert conn is not None
        from engine.backends.fireworks.jobs import TrainerJobManager
        from engine.backends.fireworks.planes import ControlPlaneTrainer

        jobs = TrainerJobManager(
            conn.api_key,
            conn.base_url,
            trainer_gateway_url=conn.trainer_gateway_url,
            account_id=conn.account_id,
        )
        trainer = ControlPlaneTrainer(jobs, conn.api_key, _tokenizer_loader())  # type: ignore[arg-type]
    else:
        raise ConfigError(f"trainer.kind: {config.trainer.kind!r} is not available in this build yet")
    stack.push_async_callback(trainer.aclose)
    if config.deployment.kind == "control_plane":
        assert conn is not None
        from engine.backends.fireworks.deployments import DeploymentManager
        from engine.backends.fireworks.planes import ControlPlaneDeployment

        manager = DeploymentManager(
            conn.api_key,
            conn.base_url,
            inference_url=conn.inference_url,
            hotload_api_url=conn.hotload_api_url,
            account_id=conn.account_id,
        )
        deployment = ControlPlaneDeployment(manager, conn.api_key)
    else:
        raise ConfigError(f"deployment.kind: {config.deployment.kind!r} is not available in this build yet")
    stack.push_async_callback(deployment.aclose)
    return Planes(trainer, deployment)

"""From a run config to the two backends it drives (the run's composition root).

``trainer.kind`` and ``deployment.kind`` pick the adapters. A ``control_plane`` plane uses the
Fireworks-shaped control plane of ``backend``: hotloop's embedded stack (started here, under the run
directory, and stopped with the run), a remote one (Fireworks or ``hotloop up``), or a connection the
caller passes (tests and services that already run a stack). The embedded stack starts only when a
plane needs it.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.backends.base import DeploymentBackend, Planes, SupervisedControlPlane, TrainerBackend
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
) -> tuple[ControlPlaneConnection, SupervisedControlPlane | None]:
    """The connection, and the control plane's process when the run starts it (the embedded stack)."""
    if given is not None:
        return given, None
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
        ), None
    from engine.local.stack import EmbeddedStack

    # The embedded trainer has no use for tinker's telemetry, and a dead one turns it into a flood of
    # "Telemetry queue full" lines: off, unless the environment asks for it (TINKER_TELEMETRY=1).
    os.environ.setdefault("TINKER_TELEMETRY", "0")
    embedded = await stack.enter_async_context(EmbeddedStack(run_dir / "stack"))
    return ControlPlaneConnection(
        base_url=embedded.base_url, api_key=embedded.api_key, account_id=embedded.account_id
    ), embedded


def _model_dir(model: str) -> Path:
    """The run's model as a Hugging Face directory (an embedded model is built once into the cache)."""
    if Path(model).is_dir():
        return Path(model)
    from engine.local.models import build_model_dir

    try:
        return build_model_dir(model)
    except ValueError as exc:
        raise ConfigError(f"model: {exc}") from None


def _tokenizer_loader() -> Callable[[str], Any]:
    # Embedded model names and local HF directories load offline; anything else falls back to
    # tinker's (Hugging Face) lookup inside the session.
    from engine.local.models import load_tokenizer

    return load_tokenizer


async def _vllm(config: RunConfig, run_dir: Path) -> DeploymentBackend:
    from engine.backends.vllm import VllmDeployment, VllmLaunchSpec, locate_vllm_python

    plane = config.deployment
    served = plane.served_model_name or config.model
    work_dir = run_dir / "vllm"
    if plane.launch is None:
        return VllmDeployment(
            base_url=plane.url("deployment"),
            served_model_name=served,
            api_key_env=plane.api_key_env,
            work_dir=work_dir,
        )
    launch = plane.launch
    python = launch.python or locate_vllm_python()
    if python is None:
        raise ConfigError(
            "deployment.launch.python: no vLLM install found (set it, or HOTLOOP_VLLM_PYTHON, "
            "or run scripts/install-vllm.sh)"
        )
    spec = VllmLaunchSpec(
        python=str(python),
        model_dir=str(await asyncio.to_thread(_model_dir, config.model)),
        served_model_name=served,
        dtype=launch.dtype,
        max_model_len=launch.max_model_len,
        extra_args=tuple(launch.args),
        env={"VLLM_CPU_KVCACHE_SPACE": str(launch.kv_cache_gib)},
    )
    return VllmDeployment(
        launch=spec,
        served_model_name=served,
        api_key_env=plane.api_key_env,
        work_dir=work_dir,
        start_timeout_s=launch.startup_timeout_s,
    )


def _import_adapters(config: RunConfig) -> None:
    kinds = {config.trainer.kind, config.deployment.kind}
    modules = {
        "control_plane": "engine.backends.fireworks.planes",
        "tinker": "engine.backends.tinker.trainer",
        "vllm": "engine.backends.vllm",
    }
    for kind in sorted(kinds):
        importlib.import_module(modules[kind])


async def open_planes(
    config: RunConfig,
    run_dir: Path,
    stack: contextlib.AsyncExitStack,
    connection: ControlPlaneConnection | None = None,
) -> Planes:
    """Build the run's backends; everything opened is closed by ``stack``."""
    # The adapters import tinker (about 2 s): off the loop, so a host's loop never stalls on it.
    await asyncio.to_thread(_import_adapters, config)
    conn: ControlPlaneConnection | None = None
    supervised: SupervisedControlPlane | None = None
    if needs_control_plane(config):
        conn, supervised = await _control_plane(config, run_dir, stack, connection)
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
        trainer = ControlPlaneTrainer(jobs, conn.api_key, _tokenizer_loader(), dialect=config.trainer.dialect)
    else:
        from engine.backends.tinker.trainer import TinkerTrainer

        key = config.trainer.api_key("trainer")
        if not key:
            raise ConfigError("trainer.api_key_env: a Tinker service needs a key")
        trainer = TinkerTrainer(
            config.trainer.url("trainer"),
            key,
            exports_dir=run_dir / "tinker-exports",
            tokenizer_loader=_tokenizer_loader(),
        )
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
        deployment = await _vllm(config, run_dir)
    stack.push_async_callback(deployment.aclose)
    return Planes(trainer, deployment, supervised)

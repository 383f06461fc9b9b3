"""Run configuration: pydantic models for ``hotloop run`` configs and ``engine.run(config)``.

A config is YAML (or a dict, or these models built in Python). Every model forbids unknown keys,
so a typo is an error, and ``load_config`` turns pydantic's errors into one ``ConfigError`` whose
message names each offending field by its dotted path (``intervals.sync_every: ...``).

Secrets are never part of a config: a remote backend names the *environment variable* holding its
API key (``api_key_env``), and the key is read only when the run connects.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from engine.errors import ConfigError

_RUN_ID = re.compile(r"^[a-z0-9]([a-z0-9-]{0,38}[a-z0-9])?$")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _check_url(value: str | None) -> str | None:
    if value is not None and not value.startswith(("http://", "https://")):
        raise ValueError(f"must be an http(s) URL, got {value!r}")
    return value.rstrip("/") if value else value


def _check_env_name(value: str | None) -> str | None:
    if value is not None and not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", value):
        raise ValueError(f"must be an environment variable name, got {value!r}")
    return value


def read_env(name: str, what: str) -> str:
    """The value of environment variable ``name`` now (never stored in a config or logged)."""
    value = os.environ.get(name, "")
    if not value:
        raise ConfigError(f"{what}: environment variable {name} is not set")
    return value


class Intervals(_Model):
    """In optimizer steps. The last step always checkpoints, syncs and (if evaluating) evaluates."""

    sync_every: int = Field(
        default=1, ge=1, description="hot-load a snapshot every k steps (RL staleness < k)"
    )
    eval_every: int = Field(
        default=5, ge=0, description="evaluate through the deployment every k steps; 0: never"
    )
    checkpoint_every: int = Field(default=5, ge=1, description="save the full training state every k steps")
    full_snapshot_every: int = Field(default=20, ge=1, description="a base snapshot every k deltas")


class RLConfig(_Model):
    prompts_per_step: int = Field(default=4, ge=1)
    group_size: int = Field(
        default=8, ge=2, description="samples per prompt; advantages are centred per group"
    )
    max_tokens: int = Field(default=6, ge=1)
    temperature: float = Field(default=1.0, gt=0)
    loss: Literal["importance_sampling", "ppo"] = "importance_sampling"
    clip_epsilon: float = Field(default=0.2, gt=0, lt=1, description="PPO ratio clip (loss: ppo)")


class SFTConfig(_Model):
    batch_size: int = Field(default=16, ge=1)


class EvalConfig(_Model):
    prompts: int = Field(default=16, ge=1, description="size of the stored held-out prompt set")
    samples_per_prompt: int = Field(default=2, ge=1)
    max_tokens: int = Field(default=6, ge=1)
    temperature: float = Field(default=1.0, ge=0)


class SamplingConfig(_Model):
    controller: Literal["adaptive", "fixed"] = "adaptive"
    window: int = Field(default=16, ge=1, description="fixed: the limit; adaptive: the initial window")
    request_timeout_s: float = Field(default=120.0, gt=0)


class BackendConfig(_Model):
    """The Fireworks-shaped control plane, for the planes whose kind is ``control_plane``.

    ``embedded``: the command starts the embedded stack (``hotloop up``) under the run directory and
    stops it at the end. ``remote``: an existing control plane (Fireworks or ``hotloop up``) at
    ``base_url``, authenticated with the key in the environment variable ``api_key_env``.
    """

    kind: Literal["embedded", "remote"] = "embedded"
    base_url: str | None = None
    api_key_env: str = "HOTLOOP_API_KEY"
    inference_url: str | None = None
    hotload_api_url: str | None = None
    trainer_gateway_url: str | None = None
    account_id: str | None = None

    @field_validator("base_url", "inference_url", "hotload_api_url", "trainer_gateway_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        return _check_url(value)

    @field_validator("api_key_env")
    @classmethod
    def _env_name(cls, value: str) -> str:
        return str(_check_env_name(value))

    @model_validator(mode="after")
    def _remote_needs_url(self) -> BackendConfig:
        if self.kind == "remote" and not self.base_url:
            raise ValueError("base_url is required when kind is 'remote'")
        return self

    def api_key(self) -> str:
        """Read the key now (never stored in the config or logged)."""
        return read_env(self.api_key_env, "backend.api_key_env")


class _ServerAddress(_Model):
    """Where a server is: ``base_url``, or the URL in the environment variable ``url_env``; its key
    in the environment variable ``api_key_env`` (read when the run connects, never stored)."""

    base_url: str | None = None
    url_env: str | None = None
    api_key_env: str | None = None

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        return _check_url(value)

    @field_validator("url_env", "api_key_env")
    @classmethod
    def _env_name(cls, value: str | None) -> str | None:
        return _check_env_name(value)

    def url(self, where: str) -> str:
        """The server's URL now (``where`` names the config section in errors)."""
        if self.base_url:
            return self.base_url
        if self.url_env:
            value = read_env(self.url_env, f"{where}.url_env").rstrip("/")
            if not value.startswith(("http://", "https://")):
                raise ConfigError(f"{where}.url_env: {self.url_env} must hold an http(s) URL, got {value!r}")
            return value
        raise ConfigError(f"{where}: needs base_url or url_env")

    def api_key(self, where: str) -> str | None:
        return read_env(self.api_key_env, f"{where}.api_key_env") if self.api_key_env else None


class TrainerPlaneConfig(_ServerAddress):
    """Which trainer backend the run drives.

    ``control_plane``: a trainer job on the Fireworks-shaped control plane named by ``backend`` (the
    embedded stack by default, or Fireworks / a remote ``hotloop up``). ``tinker``: a Tinker service at
    ``base_url`` (or the URL in ``url_env``) with the key in ``api_key_env``; there are no jobs to
    create. ``dialect`` picks the wire a ``control_plane`` trainer is spoken to in.
    """

    kind: Literal["control_plane", "tinker"] = "control_plane"
    api_key_env: str | None = "TINKER_API_KEY"
    dialect: Literal["auto", "tinker", "fireworks"] = Field(
        default="auto",
        description=(
            "control_plane: the trainer's wire. tinker: tinker's protobuf (hotloop's trainer serves it, "
            "faster); fireworks: Fireworks' JSON dialect (what Fireworks' trainers accept); auto: tinker "
            "on hotloop's control plane, fireworks anywhere else"
        ),
    )

    @model_validator(mode="after")
    def _tinker_needs_url(self) -> TrainerPlaneConfig:
        if self.kind == "tinker" and not (self.base_url or self.url_env):
            raise ValueError("a tinker trainer needs base_url or url_env")
        return self


class VllmLaunchConfig(_Model):
    """Let hotloop start vLLM (``python -m vllm.entrypoints.openai.api_server``) under its supervisor,
    serving the run's model."""

    python: str | None = Field(
        default=None,
        description="vLLM's own venv python; default: $HOTLOOP_VLLM_PYTHON, .venv-vllm, /opt/vllm-venv",
    )
    dtype: str = Field(default="float32", min_length=1, description="float32 agrees with the trainer's fp32")
    max_model_len: int = Field(default=1024, ge=16)
    kv_cache_gib: int = Field(default=1, ge=1, description="VLLM_CPU_KVCACHE_SPACE on a CPU build")
    args: list[str] = Field(default_factory=list, description="extra server arguments")
    startup_timeout_s: float = Field(default=600.0, gt=0)


class DeploymentPlaneConfig(_ServerAddress):
    """Which deployment backend the run drives.

    ``control_plane``: a deployment on the control plane named by ``backend``, hot-loaded through its
    hot-load API. ``vllm``: a vLLM server, attached at ``base_url`` (or the URL in ``url_env``), or
    started by hotloop (``launch``); weights are reloaded from snapshot files, so the trainer must
    expose them locally (an embedded trainer does).
    """

    kind: Literal["control_plane", "vllm"] = "control_plane"
    served_model_name: str | None = Field(default=None, description="default: the run's model name")
    launch: VllmLaunchConfig | None = None

    @model_validator(mode="after")
    def _vllm_needs_a_server(self) -> DeploymentPlaneConfig:
        if (
            self.kind == "vllm"
            and sum(x is not None for x in (self.base_url, self.url_env, self.launch)) != 1
        ):
            raise ValueError("a vllm deployment needs exactly one of base_url, url_env or launch")
        return self


class UserCodeConfig(_Model):
    """Where user code (reward functions) runs: never on the event loop. ``thread`` suits rewards that
    wait or release the GIL; ``process`` suits CPU-heavy rewards (they must be importable functions)."""

    executor: Literal["thread", "process"] = "thread"
    workers: int = Field(default=4, ge=1, le=64)


class Limits(_Model):
    state_timeout_s: float = Field(default=3600.0, gt=0, description="hard bound on one visit to a state")
    stall_s: float = Field(default=600.0, gt=0, description="a state with no progress for this long fails")
    ready_timeout_s: float = Field(default=900.0, gt=0, description="waiting for trainer and deployment")


class TensorBoardSinkConfig(_Model):
    """TensorBoard event files (needs ``pip install 'hotloop[tensorboard]'``)."""

    log_dir: Path | None = Field(default=None, description="default: RUN_DIR/tensorboard")


class WandbSinkConfig(_Model):
    """A Weights & Biases run (needs ``pip install 'hotloop[wandb]'``). The API key is wandb's own
    (``WANDB_API_KEY`` or ``wandb login``), never part of a config."""

    project: str = Field(default="hotloop", min_length=1)
    entity: str | None = None
    mode: Literal["online", "offline"] | None = Field(
        default=None, description="default: WANDB_MODE from the environment, else online"
    )
    dir: Path | None = Field(default=None, description="where wandb keeps its files; default: RUN_DIR")
    tags: list[str] = Field(default_factory=list)


class SinksConfig(_Model):
    """Where metrics.jsonl's rows (and the run's config) are also sent. A sink runs on its own thread
    behind a bounded queue: a sink that fails or hangs never stops or slows the run."""

    tensorboard: TensorBoardSinkConfig | None = None
    wandb: WandbSinkConfig | None = None
    queue_size: int = Field(default=1024, ge=1, description="rows a sink may lag before new ones are dropped")
    close_timeout_s: float = Field(
        default=30.0, gt=0, description="waiting for the sinks to flush at the end"
    )


class RunConfig(_Model):
    recipe: Literal["rl", "sft"] = "rl"
    model: str = Field(default="small", min_length=1, description="embedded model name or local HF directory")
    task: str = Field(default="digits", min_length=1, description="bundled task name or a JSONL dataset path")
    reward: str | None = Field(default=None, description="'module:function' overriding the task's reward")
    run_id: str | None = Field(default=None, description="default: derived from the run directory name")
    run_dir: Path | None = Field(default=None, description="default: ./runs/<recipe>-<task>-<time>")
    max_steps: int = Field(default=20, ge=0)
    learning_rate: float = Field(default=1e-3, gt=0)
    lora_rank: int = Field(default=0, ge=0)
    seed: int = 0
    intervals: Intervals = Field(default_factory=Intervals)
    rl: RLConfig = Field(default_factory=RLConfig)
    sft: SFTConfig = Field(default_factory=SFTConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    sampling: SamplingConfig = Field(default_factory=SamplingConfig)
    backend: BackendConfig = Field(default_factory=BackendConfig)
    trainer: TrainerPlaneConfig = Field(default_factory=TrainerPlaneConfig)
    deployment: DeploymentPlaneConfig = Field(default_factory=DeploymentPlaneConfig)
    user_code: UserCodeConfig = Field(default_factory=UserCodeConfig)
    limits: Limits = Field(default_factory=Limits)
    sinks: SinksConfig = Field(default_factory=SinksConfig)
    keep_resources: bool = Field(
        default=True,
        description="leave the trainer job and deployment running when the run ends or is cancelled",
    )

    @field_validator("run_id")
    @classmethod
    def _run_id(cls, value: str | None) -> str | None:
        if value is not None and not _RUN_ID.match(value):
            raise ValueError(f"must be 1-40 chars of a-z, 0-9 and '-', got {value!r}")
        return value

    @field_validator("reward")
    @classmethod
    def _reward_ref(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^[\w.]+:[\w]+$", value):
            raise ValueError(f"must look like 'package.module:function', got {value!r}")
        return value


def _field_path(loc: tuple[int | str, ...]) -> str:
    return ".".join(str(p) for p in loc) or "<config>"


def validate_config(data: Any) -> RunConfig:
    """Build a RunConfig from a mapping; raise ConfigError naming every bad field."""
    if isinstance(data, RunConfig):
        return data
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"<config>: must be a mapping of settings, got {type(data).__name__}")
    try:
        return RunConfig.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(f"{_field_path(e['loc'])}: {e['msg']}" for e in exc.errors())
        raise ConfigError(f"invalid run config: {problems}") from None


def load_config(
    path: str | os.PathLike[str] | None = None, overrides: dict[str, Any] | None = None
) -> RunConfig:
    """Read a YAML config (None: the demo defaults) and apply top-level ``overrides``."""
    data: Any = {}
    if path is not None:
        p = Path(path)
        try:
            data = yaml.safe_load(p.read_text()) or {}
        except FileNotFoundError:
            raise ConfigError(f"config: file {p} does not exist") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"config: {p} is not valid YAML: {exc}") from None
    if overrides:
        if not isinstance(data, dict):
            raise ConfigError(f"<config>: must be a mapping of settings, got {type(data).__name__}")
        data = {**data, **overrides}
    return validate_config(data)


def dump_config(config: RunConfig) -> dict[str, Any]:
    """A JSON/YAML-safe dict of the config (what the run directory stores)."""
    return config.model_dump(mode="json")

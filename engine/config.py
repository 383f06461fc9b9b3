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
    """Where the trainer and deployment come from.

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
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError(f"must be an http(s) URL, got {value!r}")
        return value.rstrip("/") if value else value

    @field_validator("api_key_env")
    @classmethod
    def _env_name(cls, value: str) -> str:
        if not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", value):
            raise ValueError(f"must be an environment variable name, got {value!r}")
        return value

    @model_validator(mode="after")
    def _remote_needs_url(self) -> BackendConfig:
        if self.kind == "remote" and not self.base_url:
            raise ValueError("base_url is required when kind is 'remote'")
        return self

    def api_key(self) -> str:
        """Read the key now (never stored in the config or logged)."""
        key = os.environ.get(self.api_key_env, "")
        if not key:
            raise ConfigError(f"backend.api_key_env: environment variable {self.api_key_env} is not set")
        return key


class Limits(_Model):
    state_timeout_s: float = Field(default=3600.0, gt=0, description="hard bound on one visit to a state")
    stall_s: float = Field(default=600.0, gt=0, description="a state with no progress for this long fails")
    ready_timeout_s: float = Field(default=900.0, gt=0, description="waiting for trainer and deployment")


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
    limits: Limits = Field(default_factory=Limits)
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

"""In-memory fakes of the backends seam (engine.backends.base), with real state.

The fake trainer counts optimizer steps and keeps the snapshots it wrote (with their parents); the
fake deployment holds one identity, refuses a delta whose parent it does not hold, and reports (or
not, like vLLM 0.32) the identity of every completion. States and whole runs are driven against them
without processes or network, so every branch of the states can be tested in milliseconds.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from engine.backends.base import (
    DeploymentRef,
    DeploymentSpec,
    RestorePoint,
    SamplerSnapshot,
    SnapshotStore,
    TrainerRef,
    TrainerSpec,
)
from engine.errors import FatalError
from engine.sampling import FixedConcurrencyController


class FakeTokenizer:
    eos_token_id = 0

    def apply_chat_template(self, messages: list[dict[str, str]], **_: Any) -> list[int]:
        return [1 + (ord(ch) % 50) for ch in messages[-1]["content"]][:16] or [1]

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return "".join(str(i % 10) for i in ids)

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return [1 + (ord(ch) % 50) for ch in text]

    def convert_tokens_to_ids(self, token: str) -> int:
        return self.eos_token_id


@dataclass
class Trainer:
    """What a trainer 'process' holds; it outlives sessions (and a run's crash)."""

    optimizer_steps: int = 0
    states: dict[str, int] = field(default_factory=dict)  # save_state path -> optimizer steps
    snapshots: dict[str, str | None] = field(default_factory=dict)  # identity -> delta parent
    sessions: int = 0


class FakeSession:
    def __init__(self, trainer: Trainer, lora_rank: int, tag: str, steps: int) -> None:
        self.trainer = trainer
        self.lora_rank = lora_rank
        self.model_id = f"model-{tag}"
        self.tokenizer = FakeTokenizer()
        self._steps = steps
        self.tag = tag
        self.closed = False

    @property
    def optimizer_steps(self) -> int:
        return self._steps

    async def forward_backward_custom(self, data: Any, fn: Any) -> Any:
        await asyncio.sleep(0)
        return SimpleNamespace(metrics={"objective": -0.1})

    async def forward_backward(self, data: Any, loss_fn: Any, loss_fn_config: Any = None) -> Any:
        await asyncio.sleep(0)
        return SimpleNamespace(metrics={"loss:sum": float(len(data))})

    async def optim_step(self, adam: Any) -> Any:
        await asyncio.sleep(0)
        self._steps += 1
        self.trainer.optimizer_steps = self._steps
        return SimpleNamespace(metrics={"optimizer_step:max": float(self._steps)})

    async def save_state(self, name: str) -> str:
        path = f"tinker://run-{self.tag}/weights/{name}"
        self.trainer.states[path] = self._steps
        return path

    async def save_weights_for_sampler(
        self, name: str, checkpoint_type: str = "base", parent_snapshot_identity: str | None = None
    ) -> SamplerSnapshot:
        identity = f"{name}-{self.tag}"
        kind = "base" if self.lora_rank else checkpoint_type
        parent = parent_snapshot_identity if kind == "delta" else None
        if kind == "delta" and parent not in self.trainer.snapshots:
            raise FatalError(f"delta against {parent!r}, which this trainer never wrote")
        self.trainer.snapshots[identity] = parent
        return SamplerSnapshot(
            path=f"tinker://run-{self.tag}/sampler_weights/{identity}",
            snapshot_name=identity,
            checkpoint_type=kind,  # type: ignore[arg-type]
            size_bytes=100 if kind == "base" else 20,
            parent_snapshot_identity=parent,
        )

    async def close(self) -> None:
        self.closed = True


class FakeTrainerBackend:
    kind = "fake"

    def __init__(self, trainer: Trainer | None = None) -> None:
        self.trainer = trainer or Trainer()
        self.provisioned: list[str] = []
        self.reattached = 0
        self.released: list[bool] = []
        self.session_steps_override: int | None = None  # a trainer that reports a wrong count

    async def provision(self, spec: TrainerSpec, known: TrainerRef | None) -> TrainerRef:
        resource = known.resource_id if known is not None else spec.resource_id
        self.provisioned.append(resource)
        return TrainerRef(self.kind, resource, {"model": spec.base_model})

    async def wait_ready(self, ref: TrainerRef, *, reattach: bool, timeout_s: float) -> TrainerRef:
        self.reattached += int(reattach)
        return TrainerRef(ref.kind, ref.resource_id, {**ref.attrs, "ready": "yes"})

    async def open_session(
        self, ref: TrainerRef, spec: TrainerSpec, restore: RestorePoint | None
    ) -> FakeSession:
        self.trainer.sessions += 1
        steps = self.trainer.states[restore.state_path] if restore is not None else 0
        if self.session_steps_override is not None:
            steps = self.session_steps_override
        return FakeSession(self.trainer, spec.lora_rank, f"{self.trainer.sessions:08x}", steps)

    def snapshot_store(self, ref: TrainerRef) -> SnapshotStore | None:
        return None

    async def release(self, ref: TrainerRef, *, delete: bool) -> None:
        self.released.append(delete)

    async def aclose(self) -> None:
        return None


@dataclass
class Deployment:
    """What a deployment 'process' serves; it outlives sessions (and a run's crash)."""

    held: str | None = None
    loads: list[tuple[str, str | None]] = field(default_factory=list)
    fail_next_load: bool = False
    switch_after_sampling: str | None = None  # someone else hot-loads this while we sample


class FakeHotLoader:
    def __init__(self, deployment: Deployment, trainer: Trainer) -> None:
        self.deployment = deployment
        self.trainer = trainer

    async def read_identity(self) -> tuple[bool, str | None]:
        return True, self.deployment.held

    async def load(self, snapshot: SamplerSnapshot, *, parent: str | None) -> None:
        dep = self.deployment
        if dep.fail_next_load:
            dep.fail_next_load = False
            raise FatalError(f"injected failure loading {snapshot.snapshot_name!r}")
        if snapshot.checkpoint_type == "delta" and parent != dep.held:
            raise FatalError(
                f"delta {snapshot.snapshot_name!r} is against {parent!r}, deployment holds {dep.held!r}"
            )
        dep.loads.append((snapshot.snapshot_name, parent))
        dep.held = snapshot.snapshot_name


@dataclass
class FakeCompletion:
    full_tokens: list[int]
    prompt_len: int
    completion_tokens: list[int]
    sampling_logprobs: list[float | None]
    snapshot_identity: str | None


class FakeSampler:
    def __init__(self, deployment: Deployment, per_completion_identity: bool) -> None:
        self.deployment = deployment
        self.per_completion_identity = per_completion_identity
        self.concurrency_controller = FixedConcurrencyController(8)
        self.requests = 0

    async def sample_with_prompt_tokens(
        self, prompt: list[int], n: int = 1, max_tokens: int = 4, temperature: float = 1.0, **_: Any
    ) -> list[FakeCompletion]:
        await asyncio.sleep(0)
        self.requests += n
        identity = self.deployment.held if self.per_completion_identity else None
        out = [
            FakeCompletion(
                full_tokens=[*prompt, *[(i + k) % 10 + 1 for k in range(max_tokens)]],
                prompt_len=len(prompt),
                completion_tokens=[(i + k) % 10 + 1 for k in range(max_tokens)],
                sampling_logprobs=[-1.0] * max_tokens,
                snapshot_identity=identity,
            )
            for i in range(n)
        ]
        if self.deployment.switch_after_sampling is not None:
            self.deployment.held, self.deployment.switch_after_sampling = (
                self.deployment.switch_after_sampling,
                None,
            )
        return out

    async def close(self) -> None:
        return None


class FakeDeploymentBackend:
    kind = "fake"

    def __init__(self, trainer: Trainer, *, per_completion_identity: bool = True) -> None:
        self.deployment = Deployment()
        self.trainer = trainer
        self.per_completion_identity = per_completion_identity
        self.released: list[bool] = []

    async def provision(
        self, spec: DeploymentSpec, trainer: TrainerRef, known: DeploymentRef | None
    ) -> DeploymentRef:
        return DeploymentRef(
            self.kind, known.resource_id if known else spec.resource_id, {"trainer": trainer.resource_id}
        )

    async def wait_ready(self, ref: DeploymentRef, *, timeout_s: float) -> DeploymentRef:
        return ref

    def hot_loader(
        self, ref: DeploymentRef, store: SnapshotStore | None, *, timeout_s: float, poll_interval_s: float
    ) -> FakeHotLoader:
        return FakeHotLoader(self.deployment, self.trainer)

    def sampler(
        self, ref: DeploymentRef, *, tokenizer: Any, controller: Any, retry_policy: Any
    ) -> FakeSampler:
        return FakeSampler(self.deployment, self.per_completion_identity)

    async def release(self, ref: DeploymentRef, *, delete: bool) -> None:
        self.released.append(delete)

    async def aclose(self) -> None:
        return None


def planes(*, per_completion_identity: bool = True) -> Any:
    from engine.backends.base import Planes

    trainer = FakeTrainerBackend()
    return Planes(
        trainer, FakeDeploymentBackend(trainer.trainer, per_completion_identity=per_completion_identity)
    )


def make_context(tmp: Path, planes_: Any, **config: Any) -> Any:
    """A RunContext as the orchestrator builds it, on fake planes."""
    from engine.config import validate_config
    from engine.recipes.tasks import eval_set_json, load_task
    from engine.run.context import RunContext
    from engine.run.offload import UserCode
    from engine.run.orchestrator import schedule_of
    from engine.run.rundir import RunDir

    cfg = validate_config({"model": "tiny", "max_steps": 2, **config})
    task = load_task(cfg.task)
    rows, sha = eval_set_json(task, cfg.eval.prompts)
    return RunContext(
        config=cfg,
        run_dir=RunDir(tmp),
        run_id="fake",
        schedule=schedule_of(cfg),
        task=task,
        planes=planes_,
        user_code=UserCode(task),
        eval_rows=rows,
        eval_sha256=sha,
    )

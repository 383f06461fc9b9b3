"""The backends seam: what a run needs from a trainer and from a deployment, as small Protocols.

The lifecycle states use only these names (a test reads engine/states/ and fails on any import of a concrete
backend). Each system hotloop drives has an adapter that satisfies them:

    trainer      fireworks (a Fireworks-shaped control plane: Fireworks or ``hotloop up``), tinker
    deployment   fireworks (the same control plane's deployments and hot-load API), vllm

A trainer backend *provisions* (creates or attaches to) a trainer, *waits* for it (re-attaching after a
loss), *opens* a training session, and *releases* it. A deployment backend provisions and waits the
same way, gives a ``HotLoader`` (push a snapshot, read back the identity really served) and a
``DeploymentSampler`` configured with its completion dialect. Everything a resumed run must find again
is in the refs (``TrainerRef``, ``DeploymentRef``), which the run journals as plain JSON.

Values between the two sides are typed: a ``SnapshotRef`` names what the trainer wrote and how it is
encoded; a ``SnapshotStore`` gives the bytes to a deployment that needs them locally (vLLM reloads
from a directory; Fireworks loads from its own bucket by identity and never asks).

Recovery (engine.run.recovery) goes through the same seam: each backend answers a cheap ``health(ref)``
(one read, no retries: is the resource serving, starting, failed with a reason, gone, or is its
control plane unreachable) and a ``recover(ref, ...)`` that does what its system can to bring the
resource back (resume a FAILED job, re-create a FAILED deployment, restart a launched server). A part
that is lost while a state runs is raised as a ``PartLost`` naming the backend's own reason.
"""

from __future__ import annotations

from collections.abc import Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol, Self, runtime_checkable

from engine.errors import HotloopError

if TYPE_CHECKING:
    from engine.sampling.controllers import ConcurrencyController
    from engine.sampling.retry import SamplingRetryPolicy
    from engine.sampling.sampler import DeploymentSampler

CheckpointType = Literal["base", "delta"]
HotloadPolicy = Literal["keep", "drain"]

HOTLOOP_DELTA_FORMAT = ("zstd", "sha256")
"""hotloop's own delta encoding (engine.weights.snapshot): compression and checksum format names."""


# ---- what the run asks for ----------------------------------------------------------------------


@dataclass(frozen=True)
class TrainerSpec:
    """The trainer a run wants. ``resource_id`` is chosen by the client (derived from the run id), so
    a retried or resumed request finds the same resource instead of creating a second one."""

    base_model: str
    lora_rank: int
    learning_rate: float
    resource_id: str
    display_name: str


@dataclass(frozen=True)
class DeploymentSpec:
    base_model: str
    resource_id: str


# ---- what identifies a provisioned resource (journaled; a resumed run attaches to it) -----------


@dataclass(frozen=True)
class ResourceRef:
    """A provisioned resource. ``kind`` names the adapter; ``attrs`` holds the adapter's own facts
    (e.g. a job name, the local bucket of an embedded trainer, an endpoint) as strings."""

    kind: str
    resource_id: str
    attrs: Mapping[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "resource_id": self.resource_id, "attrs": dict(self.attrs)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Self:
        return cls(str(data["kind"]), str(data["resource_id"]), {k: str(v) for k, v in data["attrs"].items()})


@dataclass(frozen=True)
class TrainerRef(ResourceRef):
    """A provisioned trainer."""


@dataclass(frozen=True)
class DeploymentRef(ResourceRef):
    """A provisioned deployment."""


# ---- snapshots between trainer and deployment ----------------------------------------------------


@dataclass(frozen=True)
class SamplerSnapshot:
    """A sampler snapshot the trainer wrote. ``snapshot_name`` is the identity a deployment loads and
    reports back; ``parent_snapshot_identity`` is a delta's parent. ``delta_format`` names the
    encoding (compression, checksum) of a delta, as the trainer that wrote it reports it."""

    path: str
    snapshot_name: str
    checkpoint_type: CheckpointType
    size_bytes: int | None = None
    parent_snapshot_identity: str | None = None
    encode_seconds: float | None = None
    delta_format: tuple[str, str] = HOTLOOP_DELTA_FORMAT


@runtime_checkable
class SnapshotStore(Protocol):
    """Where a deployment that loads from local files finds a snapshot's bytes."""

    async def local_dir(self, identity: str) -> Path:
        """A directory holding the snapshot ``identity`` in hotloop's format (manifest.json + payload);
        downloads it first when the trainer is remote."""
        ...


# ---- health and loss of a part (engine.run.recovery decides what to do about it) -----------------

HealthStatus = Literal["ok", "starting", "failed", "gone", "unreachable"]
Part = Literal["trainer", "deployment", "control_plane"]


@dataclass(frozen=True)
class Health:
    """What a backend says of one resource now, from one cheap read.

    ``ok``: serving. ``starting``: provisioning, resuming or rolling (it will serve by itself).
    ``failed``: it stopped and the system can bring it back (a FAILED job, a FAILED deployment, a
    launched server that exited). ``gone``: deleted or tombstoned. ``unreachable``: the read itself
    failed (its control plane or server did not answer). ``detail`` is the system's own reason.
    """

    status: HealthStatus
    detail: str = ""

    @property
    def lost(self) -> bool:
        return self.status in ("failed", "gone")


class PartLost(HotloopError):
    """A part of the run (trainer, deployment, control plane) failed or went away; the message is the
    backend's own account ("trainer job 'x' is FAILED: trainer process killed by SIGKILL")."""

    def __init__(self, part: Part, status: HealthStatus, message: str) -> None:
        super().__init__(message)
        self.part: Part = part
        self.status: HealthStatus = status


class SupervisedControlPlane(Protocol):
    """A control plane the run started itself (the embedded stack): its process can be watched, and
    restarted on the same address, key and state directory (which brings its trainer and deployment
    back: the state survives the process)."""

    def exit_reason(self) -> str | None:
        """None while the process runs; else how it ended (exit status, last log lines)."""
        ...

    async def restart(self, *, timeout_s: float) -> None: ...


# ---- the trainer side ----------------------------------------------------------------------------


class TrainerSession(Protocol):
    """A connected training client (``engine.backends.tinker.TrainingSession`` satisfies it).

    Training calls are submitted when called (so ``forward_backward`` and ``optim_step`` pipeline on
    the trainer in call order) and return an awaitable of the result, bounded by the session.
    ``optimizer_steps`` is the trainer's own optimizer step counter, known at connect time and kept
    current from each ``optim_step`` result: the one source of that fact for the run.
    """

    @property
    def lora_rank(self) -> int: ...

    @property
    def model_id(self) -> str: ...

    @property
    def tokenizer(self) -> Any: ...

    @property
    def optimizer_steps(self) -> int: ...

    def forward_backward(
        self, data: Sequence[Any], loss_fn: Any, loss_fn_config: Mapping[str, float | str] | None = None
    ) -> Coroutine[Any, Any, Any]: ...

    def forward_backward_custom(self, data: Sequence[Any], fn: Any) -> Coroutine[Any, Any, Any]: ...

    def optim_step(self, adam_params: Any) -> Coroutine[Any, Any, Any]: ...

    def save_state(self, name: str) -> Coroutine[Any, Any, str]:
        """Weights + optimizer; returns the path a later ``open_session(restore=...)`` loads."""
        ...

    def save_weights_for_sampler(
        self, name: str, checkpoint_type: CheckpointType = "base", parent_snapshot_identity: str | None = None
    ) -> Coroutine[Any, Any, SamplerSnapshot]: ...

    async def close(self) -> None: ...


@dataclass(frozen=True)
class RestorePoint:
    """A full training state to resume from, as the journal committed it."""

    state_path: str
    optimizer_steps: int


class TrainerBackend(Protocol):
    kind: str

    async def provision(self, spec: TrainerSpec, known: TrainerRef | None) -> TrainerRef:
        """Create the trainer, or attach to ``known`` / an existing one with ``spec.resource_id``."""
        ...

    async def wait_ready(self, ref: TrainerRef, *, reattach: bool, timeout_s: float) -> TrainerRef:
        """Until the trainer answers. ``reattach``: it may have been lost since (a crash, a preemption):
        resume it if the system can. Returns the ref with what became known (e.g. its endpoint)."""
        ...

    async def open_session(
        self, ref: TrainerRef, spec: TrainerSpec, restore: RestorePoint | None
    ) -> TrainerSession:
        """A new training client: a fresh model, or one loaded from ``restore`` with its optimizer."""
        ...

    def snapshot_store(self, ref: TrainerRef) -> SnapshotStore | None:
        """Where this trainer's sampler snapshots can be read as files (None: nowhere locally)."""
        ...

    async def release(self, ref: TrainerRef, *, delete: bool) -> None:
        """The run is over: delete the trainer (``delete``) or leave it running."""
        ...

    async def health(self, ref: TrainerRef) -> Health:
        """One cheap, unretried read of the trainer's state (never raises for a failed read:
        ``unreachable``)."""
        ...

    async def recover(self, ref: TrainerRef, *, timeout_s: float) -> TrainerRef:
        """Bring a failed or lost trainer back (resume its job) and wait until it answers; the run
        then restores its last committed full state into a new model. Raises if it cannot."""
        ...

    async def aclose(self) -> None: ...


# ---- the deployment side -------------------------------------------------------------------------


class HotLoader(Protocol):
    """Pushes snapshots into one deployment and reads back what it serves. Never assumes: ``load``
    returns only once the deployment reports the identity."""

    async def read_identity(self) -> tuple[bool, str | None]:
        """(reported, identity): reported is False while no replica answers yet; identity None is the
        deployment's initial weights."""
        ...

    async def load(self, snapshot: SamplerSnapshot, *, parent: str | None) -> None:
        """Load ``snapshot`` (a delta against ``parent``, which the deployment holds) and wait until it is
        served; raise (HotloadError/StuckError) if it is not. A failed load must leave the deployment
        serving what it served before, or report honestly what it serves on the next read."""
        ...


class DeploymentBackend(Protocol):
    kind: str
    per_completion_identity: bool
    """True when every completion reports the identity that generated it; False when only the identity
    verified around a sampling state is known (the state then checks it did not change)."""
    hotload_policy: HotloadPolicy
    """What a run does around a hot-load while rollouts are being sampled (asynchronous RL).
    ``keep``: sampling goes on; the deployment finishes each in-flight completion on the weights it
    started with and names them per completion (needs ``per_completion_identity``), so each
    completion's reported identity decides its policy version (hotloop's embedded deployment).
    ``drain``: the sampler stops admitting attempts, waits until those in flight finished, the
    hot-load runs, admission reopens in a new epoch; every completion is then started and finished
    within one verified identity and stamped with it (vLLM 0.32, whose reload and ``pause?mode=keep``
    let a request continue on new weights unnamed; Fireworks, which names no identity per completion)."""

    async def provision(
        self, spec: DeploymentSpec, trainer: TrainerRef, known: DeploymentRef | None
    ) -> DeploymentRef: ...

    async def wait_ready(self, ref: DeploymentRef, *, timeout_s: float) -> DeploymentRef: ...

    def hot_loader(
        self, ref: DeploymentRef, store: SnapshotStore | None, *, timeout_s: float, poll_interval_s: float
    ) -> HotLoader: ...

    def sampler(
        self,
        ref: DeploymentRef,
        *,
        tokenizer: Any,
        controller: ConcurrencyController,
        retry_policy: SamplingRetryPolicy,
    ) -> DeploymentSampler: ...

    async def release(self, ref: DeploymentRef, *, delete: bool) -> None: ...

    async def health(self, ref: DeploymentRef) -> Health:
        """One cheap, unretried read of the deployment's state (``unreachable`` when the read fails)."""
        ...

    async def recover(self, ref: DeploymentRef, trainer: TrainerRef, *, timeout_s: float) -> DeploymentRef:
        """Bring a failed or missing deployment back (resume, re-create or relaunch it, linked to
        ``trainer``) and wait until it serves. It then serves its initial weights, so the run owes a
        full snapshot. Raises if it cannot."""
        ...

    async def aclose(self) -> None: ...


@dataclass
class Planes:
    """The two backends a run drives (they may share a control plane). ``control_plane`` is set when
    the run started that control plane itself (the embedded stack), so recovery may restart it."""

    trainer: TrainerBackend
    deployment: DeploymentBackend
    control_plane: SupervisedControlPlane | None = None

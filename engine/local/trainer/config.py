"""Settings of one trainer process, and the request-level error types its handlers map to HTTP."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class TrainerConfig:
    model: str
    bucket: Path
    state_dir: Path | None = None
    host: str = "127.0.0.1"
    port: int = 0
    api_key: str | None = None
    # Largest accepted request body; aiohttp answers 413 past it.
    max_body_bytes: int = 64 * 1024 * 1024
    # retrieve_future long-poll: the client re-polls at once on try_again, so block a while first
    # (its own HTTP timeout is 45 s).
    poll_timeout_s: float = 25.0
    # How long a training request whose seq_id is ahead of the next expected one is held waiting
    # for the missing ones (parallel fwd/bwd chunks legitimately arrive out of order).
    seq_gap_timeout_s: float = 60.0
    # Undelivered results are kept this long; delivered ones a short grace period (the client may
    # re-poll after losing a response). Either way, once dropped the id answers 410.
    future_ttl_s: float = 3600.0
    delivered_grace_s: float = 120.0
    # torch intra-op threads for this process (None: torch's default, one per core). One thread is
    # much faster for tiny models on a busy machine, where OpenMP spin-waits fight for the cores.
    torch_threads: int | None = None
    # Other names this trainer answers to for its model (``--alias Qwen/Qwen3-8B``): a client asking
    # for one gets this model, and sees the name it asked for echoed back (get_info, training runs).
    aliases: tuple[str, ...] = ()
    # Most sequences one batched generation runs (sample requests on the same weights are batched
    # together); 1 serves them one at a time.
    sample_batch_rows: int = 32
    # Activation budget of one forward_backward micro-batch: a request over it is split into groups of
    # datums whose gradients accumulate (exact: every loss is a sum over datums). See ``microbatch``.
    microbatch_mb: int = 1024

    @property
    def resolved_state_dir(self) -> Path:
        return self.state_dir if self.state_dir is not None else self.bucket.parent / "state"


class TrainerBadRequest(Exception):
    """A bad request: the message names the field at fault. ``status`` is the HTTP status used when
    it is detected before a future is issued; afterwards it becomes a future error, category user."""

    status = 400

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        if status is not None:
            self.status = status


class NotFound(TrainerBadRequest):
    status = 404


class Gone(TrainerBadRequest):
    status = 410

"""The records that pass between the API layer, the scheduler's worker thread and the handlers."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

from engine.local.deployment.token_selection import SamplingParams


@dataclass(frozen=True)
class SeqSpec:
    """What one sequence must do; built by the API layer from a validated request."""

    prompt: list[int]
    max_tokens: int
    sampling: SamplingParams = field(default_factory=SamplingParams)
    seed: int | None = None
    stop_token_ids: frozenset[int] = frozenset()
    stop_strings: tuple[str, ...] = ()
    top_logprobs: int = 0
    prompt_logprobs: bool = False  # echo + logprobs: score the prompt too


@dataclass(frozen=True)
class TokenOut:
    token_id: int
    logprob: float | None
    sampling_logprob: float | None
    top: list[tuple[int, float]]


@dataclass
class Timing:
    arrival: float
    scheduled: float | None = None
    prefill_done: float | None = None
    first_decode: float | None = None
    finished: float | None = None
    num_concurrent: int = 0
    cached_prompt_tokens: int = 0  # prompt tokens whose K/V another row computed


@dataclass
class Update:
    """What happened to one sequence during one worker iteration."""

    index: int
    tokens: list[TokenOut] = field(default_factory=list)
    text: str = ""
    finish_reason: str | None = None
    identity: str | None = None  # set on the first update (when the sequence was scheduled)
    started: bool = False
    prompt_logprobs: list[TokenOut | None] | None = None
    timing: Timing | None = None  # set on the first and the final update


class QueueFullError(Exception):
    def __init__(self, retry_after_s: float) -> None:
        super().__init__("waiting queue is full")
        self.retry_after_s = retry_after_s


class RequestHandle:
    """The event-loop side of one request: updates arrive on ``queue`` (lists of Update, or an error)."""

    def __init__(self, n: int, arrival: float | None = None, client: str = "") -> None:
        self.n = n
        self.client = client  # whose share of the waiting queue this request uses (``fairness``)
        self.arrival = time.perf_counter() if arrival is None else arrival
        self.queue: asyncio.Queue[list[Update] | BaseException] = asyncio.Queue()
        self.cancelled = False  # set by the handler when the client is gone; read by the worker

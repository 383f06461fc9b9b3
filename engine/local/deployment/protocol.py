"""Request parsing and validation for the completions and hot-load endpoints.

Everything here is pure: bytes in, a validated plan out, or ``DeploymentBadRequest`` naming the field at
fault (rendered as an OpenAI-style 400 by the app).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StringConstraints,
    ValidationError,
)

from engine.local.deployment.state import SeqSpec
from engine.local.deployment.token_selection import SamplingParams
from engine.local.inputs import BadInput, parse_json_object
from engine.log import clip
from engine.weights.names import SnapshotError, check_identity

MAX_N = 64
MAX_TOP_LOGPROBS = 20
# Stop strings are searched for in every sequence after every token: bounded in count and length.
MAX_STOP = 32
MAX_STOP_CHARS = 256
MAX_STOP_TOKEN_IDS = 1024
MAX_INT = 2**31 - 1
StopString = Annotated[str, StringConstraints(max_length=MAX_STOP_CHARS)]


class DeploymentBadRequest(ValueError):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


class StreamOptions(BaseModel):
    include_usage: bool = True


class CompletionRequest(BaseModel):
    # Unknown fields (prompt_cache_key, user, ...) are accepted and ignored, as vLLM does.
    model_config = ConfigDict(extra="allow")

    model: str | None = None
    prompt: str | list[StrictInt]
    n: int = Field(1, ge=1, le=MAX_N)
    max_tokens: int = Field(16, ge=1, le=MAX_INT)
    temperature: float = Field(1.0, ge=0.0, le=100.0, allow_inf_nan=False)
    top_p: float = Field(1.0, gt=0.0, le=1.0, allow_inf_nan=False)
    top_k: int = Field(0, ge=-1, le=MAX_INT)
    seed: int | None = None
    stop: StopString | Annotated[list[StopString | StrictInt], Field(max_length=MAX_STOP)] | None = None
    stop_token_ids: Annotated[list[StrictInt], Field(max_length=MAX_STOP_TOKEN_IDS)] | None = None
    ignore_eos: bool = False
    logprobs: StrictBool | StrictInt | None = None
    top_logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)
    echo: bool = False
    stream: bool = False
    stream_options: StreamOptions | None = None
    raw_output: bool = False
    usage: bool = True
    perf_metrics_in_response: bool = False


class HotLoadRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    identity: str
    reset_prompt_cache: bool = True
    incremental_snapshot_metadata: dict[str, Any] | None = None


@dataclass(frozen=True)
class CompletionPlan:
    """A validated request: what to run (``specs``, one per choice) and how to answer."""

    request: CompletionRequest
    prompt_ids: list[int]
    specs: list[SeqSpec]
    want_logprobs: bool
    top_logprobs: int

    @property
    def model(self) -> str:
        return self.request.model or ""


def parse_json(body: bytes) -> dict[str, Any]:
    """Strict JSON (``engine.local.inputs``): no NaN, bounded depth and numbers, valid Unicode."""
    try:
        return parse_json_object(body)
    except BadInput as exc:
        raise DeploymentBadRequest(exc.field, exc.message) from exc


def _validate(model: type[BaseModel], data: dict[str, Any]) -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = first.get("loc", ())
        # drop pydantic's union-branch labels ("list[int]", "str") from the location
        parts = [
            str(p) for p in loc if not (isinstance(p, str) and ("[" in p or p in ("str", "int", "bool")))
        ]
        field = parts[0] + "".join(f"[{p}]" for p in parts[1:]) if parts else "body"
        raise DeploymentBadRequest(field, first.get("msg", "invalid value")) from exc


def parse_completion(
    data: dict[str, Any],
    *,
    tokenizer: Any,
    vocab_size: int,
    max_positions: int,
    eos_token_id: int | None,
    max_prompt_chars: int | None = None,
) -> CompletionPlan:
    """``max_prompt_chars``: a text prompt longer than this cannot fit the context (the caller
    derives it from the tokenizer's longest token) and is refused before it is tokenized."""
    req: CompletionRequest = _validate(CompletionRequest, data)
    # Choice i is seeded with seed + i; torch.Generator.manual_seed takes [-2**63, 2**64).
    if req.seed is not None and not -(2**63) <= req.seed <= 2**64 - req.n:
        raise DeploymentBadRequest("seed", f"must be an integer in [-2**63, 2**64 - n), got {req.seed}")
    if isinstance(req.prompt, str):
        if max_prompt_chars is not None and len(req.prompt) > max_prompt_chars:
            raise DeploymentBadRequest(
                "prompt",
                f"{len(req.prompt)} characters cannot fit the model's context of {max_positions} tokens "
                f"(at most {max_prompt_chars} characters)",
            )
        prompt = list(tokenizer.encode(req.prompt, add_special_tokens=False))
    else:
        prompt = list(req.prompt)
    if not prompt:
        raise DeploymentBadRequest("prompt", "must not be empty")
    if len(prompt) >= max_positions:  # before the per-token checks: their cost scales with the prompt
        raise DeploymentBadRequest(
            "prompt", f"{len(prompt)} tokens leave no room in the model's context of {max_positions} tokens"
        )
    for i, tok in enumerate(prompt):
        if not 0 <= tok < vocab_size:
            raise DeploymentBadRequest(
                f"prompt[{i}]", f"token id {clip(tok, 40)} is outside the vocabulary [0, {vocab_size})"
            )
    stop_strings: list[str] = []
    stop_ids: set[int] = set(req.stop_token_ids or [])
    stops = [req.stop] if isinstance(req.stop, str) else (req.stop or [])
    for item in stops:
        if isinstance(item, int):
            stop_ids.add(item)
        else:
            stop_strings.append(item)
    for i, tok in enumerate(sorted(stop_ids)):
        if not 0 <= tok < vocab_size:
            raise DeploymentBadRequest("stop", f"stop token id {tok} (#{i}) is outside the vocabulary")
    if eos_token_id is not None and not req.ignore_eos:
        stop_ids.add(eos_token_id)
    want_logprobs = req.logprobs is not None and req.logprobs is not False
    top = 0
    if want_logprobs:
        if req.top_logprobs is not None:
            top = req.top_logprobs
        elif isinstance(req.logprobs, int) and not isinstance(req.logprobs, bool):
            top = req.logprobs
        if not 0 <= top <= MAX_TOP_LOGPROBS:
            raise DeploymentBadRequest("logprobs", f"must be between 0 and {MAX_TOP_LOGPROBS}")
    sampling = SamplingParams(temperature=req.temperature, top_p=req.top_p, top_k=max(req.top_k, 0))
    specs = [
        SeqSpec(
            prompt=prompt,
            max_tokens=req.max_tokens,
            sampling=sampling,
            seed=None if req.seed is None else req.seed + i,
            stop_token_ids=frozenset(stop_ids),
            stop_strings=tuple(stop_strings),
            top_logprobs=top,
            prompt_logprobs=want_logprobs and req.echo,
        )
        for i in range(req.n)
    ]
    return CompletionPlan(req, prompt, specs, want_logprobs, top)


def parse_hot_load(data: dict[str, Any]) -> HotLoadRequest:
    """Validated before the 200: an identity that cannot name a snapshot (``../x``, ``/etc/x``) is a
    400 now, not an error stage later."""
    req: HotLoadRequest = _validate(HotLoadRequest, data)
    try:
        check_identity(req.identity)  # a bare name or <run>/<name>
    except SnapshotError as exc:
        raise DeploymentBadRequest("identity", str(exc)) from exc
    meta = req.incremental_snapshot_metadata
    previous = meta.get("previous_snapshot_identity") if meta is not None else None
    if previous is not None and not isinstance(previous, str):
        raise DeploymentBadRequest(
            "incremental_snapshot_metadata.previous_snapshot_identity", "must be a string"
        )
    return req

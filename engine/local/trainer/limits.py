"""The trainer's request bounds, checked at the edge before any work or allocation scales with them.

Integers: every JSON integer is a 64-bit one (``params.field``); seq ids are in [0, MAX_SEQ_ID] and
at most SEQ_WINDOW ahead of the next expected one (429 beyond, the window moves as earlier ones
arrive), so a held request never stands for an unbounded gap. Tensors: a declared shape is checked
(dims, exact product, rows = tokens) before anything is allocated, and the elements that sparse
tensors densify to are capped per request relative to the body that carried them. Sampling: finite
temperature in [0, MAX_TEMPERATURE], top_p in [0, 1], bounded stop lists.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from engine.local.trainer.config import TrainerBadRequest
from engine.log import clip

MAX_SEQ_ID = 2**62
# Sequenced ops a model holds ahead of its next expected seq_id, and unsequenced ops it queues.
SEQ_WINDOW = 256
# JSON bodies (everything but forward_backward's protobuf) are small; a larger one is refused
# before it is parsed into Python objects (about ten times its size).
MAX_JSON_BYTES = 8 * 1024 * 1024
MAX_TENSOR_DIM = 2**31 - 1
# Elements sparse tensors of one request may densify to: max(floor, ratio x body bytes), capped.
SPARSE_FLOOR_ELEMENTS = 1 << 20
SPARSE_ELEMENTS_PER_BODY_BYTE = 16
MAX_REQUEST_ELEMENTS = 1 << 24
MAX_TEMPERATURE = 100.0
MAX_STOP_ENTRIES = 32
MAX_STOP_CHARS = 256
MAX_STOP_TOKEN_IDS = 1 << 18


class Backlogged(TrainerBadRequest):
    """Retry later: the bound is on work queued now, not on the request itself."""

    status = 429


def check_seq_id(value: Any, field: str = "seq_id") -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_SEQ_ID:
        raise TrainerBadRequest(f"{field} must be an integer in [0, 2**62], got {clip(value, 60)}")
    return value


def element_budget(body_bytes: int) -> int:
    return min(MAX_REQUEST_ELEMENTS, max(SPARSE_FLOOR_ELEMENTS, SPARSE_ELEMENTS_PER_BODY_BYTE * body_bytes))


def check_shape(shape: Sequence[int], where: str, rows: int) -> int:
    """The element count of a declared loss-input shape: [rows] or [rows, K], every dim in range."""
    if not 1 <= len(shape) <= 2:
        raise TrainerBadRequest(
            f"{where} has shape {clip(list(shape), 80)}; expected [{rows}] or [{rows}, K] "
            "(one row per model_input token)"
        )
    if any(not 0 <= s <= MAX_TENSOR_DIM for s in shape):
        raise TrainerBadRequest(f"{where}: shape {list(shape)} has a dimension outside [0, 2**31)")
    if shape[0] != rows:
        raise TrainerBadRequest(
            f"{where} has shape {list(shape)}; expected [{rows}] or [{rows}, K] "
            "(one row per model_input token)"
        )
    return math.prod(shape)  # exact: Python ints do not wrap


def check_stop(stop: Any) -> None:
    """Stop strings are bounded (each is searched for after every sampled token); stop token ids
    cost a set lookup each and only need a sane count."""
    entries = stop if isinstance(stop, list) else [stop] if stop is not None else []
    strings = [s for s in entries if isinstance(s, str)]
    if len(strings) > MAX_STOP_ENTRIES:
        raise TrainerBadRequest(
            f"sampling_params.stop: {len(strings)} strings; at most {MAX_STOP_ENTRIES} are allowed"
        )
    if len(entries) > MAX_STOP_TOKEN_IDS:
        raise TrainerBadRequest(
            f"sampling_params.stop: {len(entries)} token ids; at most {MAX_STOP_TOKEN_IDS} are allowed"
        )
    for i, s in enumerate(strings):
        if len(s) > MAX_STOP_CHARS:
            raise TrainerBadRequest(
                f"sampling_params.stop[{i}]: {len(s)} characters; at most {MAX_STOP_CHARS} are allowed"
            )


def check_sampling(temperature: float | None, top_p: float | None) -> None:
    if temperature is not None and not (math.isfinite(temperature) and 0 <= temperature <= MAX_TEMPERATURE):
        raise TrainerBadRequest(
            f"sampling_params.temperature must be a finite number in [0, {MAX_TEMPERATURE:g}], "
            f"got {temperature!r}"
        )
    if top_p is not None and not (math.isfinite(top_p) and 0 <= top_p <= 1):
        raise TrainerBadRequest(f"sampling_params.top_p must be in [0, 1], got {top_p!r}")

"""Prompts for a load test: from a JSONL file or synthetic token sequences.

Everything is tokenized before the run starts (never on the event loop, inference-perf#648), and
requests carry token ids, like the DeploymentSampler, so input lengths are exact.

JSONL: one object per line with one of ``prompt`` (text), ``prompt_token_ids`` (list of ints) or
``messages`` (chat, rendered with the tokenizer's chat template); optional ``max_tokens`` (alias
``output_tokens``). Blank lines are skipped; any other bad line is an error naming its number.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.errors import ConfigError


class PromptFileError(ConfigError):
    """A prompt file that cannot be used; the message names the file and line."""


@dataclass(frozen=True)
class Prompt:
    token_ids: list[int]
    max_tokens: int

    @property
    def input_tokens(self) -> int:
        return len(self.token_ids)


def _tokenize_text(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer.encode(text, add_special_tokens=False))


def _tokenize_messages(tokenizer: Any, messages: Any) -> list[int]:
    ids = tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True, return_dict=False
    )
    return [int(i) for i in ids]


def _parse_line(raw: str, where: str, tokenizer: Any, default_max_tokens: int) -> Prompt:
    try:
        obj = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise PromptFileError(f"{where}: not valid JSON ({exc.msg} at column {exc.colno})") from None
    if not isinstance(obj, dict):
        raise PromptFileError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    max_tokens = obj.get("max_tokens", obj.get("output_tokens", default_max_tokens))
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
        raise PromptFileError(f"{where}: 'max_tokens' must be a positive integer, got {max_tokens!r}")
    if "prompt_token_ids" in obj:
        ids = obj["prompt_token_ids"]
        if not isinstance(ids, list) or not ids or not all(isinstance(i, int) and i >= 0 for i in ids):
            raise PromptFileError(f"{where}: 'prompt_token_ids' must be a non-empty list of token ids")
        return Prompt(list(ids), max_tokens)
    if "prompt" in obj:
        text = obj["prompt"]
        if not isinstance(text, str) or not text:
            raise PromptFileError(f"{where}: 'prompt' must be a non-empty string")
        ids = _tokenize_text(tokenizer, text)
    elif "messages" in obj:
        msgs = obj["messages"]
        if not isinstance(msgs, list) or not all(
            isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
            for m in msgs
        ):
            raise PromptFileError(f"{where}: 'messages' must be a list of {{role, content}} string objects")
        ids = _tokenize_messages(tokenizer, msgs)
    else:
        raise PromptFileError(f"{where}: needs one of 'prompt', 'prompt_token_ids' or 'messages'")
    if not ids:
        raise PromptFileError(f"{where}: the prompt tokenizes to no tokens")
    return Prompt(ids, max_tokens)


def load_jsonl(path: Path, tokenizer: Any, *, default_max_tokens: int) -> list[Prompt]:
    """Read prompts from a JSONL file; PromptFileError names the first bad line."""
    if not path.is_file():
        raise PromptFileError(f"--prompts: {path} is not a file")
    prompts: list[Prompt] = []
    with path.open(encoding="utf-8") as fh:
        for lineno, raw in enumerate(fh, start=1):
            if not raw.strip():
                continue
            prompts.append(_parse_line(raw, f"{path} line {lineno}", tokenizer, default_max_tokens))
    if not prompts:
        raise PromptFileError(f"--prompts: {path} holds no prompts")
    return prompts


def _spread(rng: random.Random, mean: int, spread: float) -> int:
    if spread <= 0:
        return mean
    lo = max(1, round(mean * (1 - spread)))
    hi = max(lo, round(mean * (1 + spread)))
    return rng.randint(lo, hi)


def synthetic(
    *,
    count: int,
    input_tokens: int,
    output_tokens: int,
    input_spread: float = 0.0,
    output_spread: float = 0.0,
    vocab_size: int,
    exclude_ids: frozenset[int] = frozenset(),
    seed: int = 0,
) -> list[Prompt]:
    """``count`` prompts of random tokens; lengths uniform in mean*(1 +- spread) (spread in [0, 1))."""
    for name, value in (("--input-tokens", input_tokens), ("--output-tokens", output_tokens)):
        if value < 1:
            raise ConfigError(f"{name} must be >= 1, got {value}")
    for name, frac in (("--input-spread", input_spread), ("--output-spread", output_spread)):
        if not 0 <= frac < 1:
            raise ConfigError(f"{name} must be in [0, 1), got {frac}")
    if count < 1:
        raise ConfigError(f"--num-prompts must be >= 1, got {count}")
    pool = [i for i in range(vocab_size) if i not in exclude_ids]
    if not pool:
        raise ConfigError("the tokenizer has no ordinary tokens to build synthetic prompts from")
    rng = random.Random(seed)
    return [
        Prompt(
            [rng.choice(pool) for _ in range(_spread(rng, input_tokens, input_spread))],
            _spread(rng, output_tokens, output_spread),
        )
        for _ in range(count)
    ]


def tokenizer_vocab(tokenizer: Any) -> tuple[int, frozenset[int]]:
    """(vocab size, special token ids) of a Hugging Face tokenizer."""
    return len(tokenizer), frozenset(int(i) for i in getattr(tokenizer, "all_special_ids", []) or [])


def load_tokenizer(name_or_path: str) -> Any:
    """A tokenizer from a local directory, or an embedded model's ("tiny", "small")."""
    from engine.local.models import load_tokenizer as _load

    try:
        return _load(name_or_path)
    except Exception as exc:  # transformers raises many types; the user needs the option named
        raise ConfigError(f"--tokenizer: cannot load {name_or_path!r}: {exc}") from exc

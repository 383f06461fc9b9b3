"""Tasks: prompts, a verifiable reward, and demonstrations (for SFT) -- plus the bundled demo.

The demo task ``digits`` asks for a number in many phrasings; the reward is the fraction of the
answer's visible characters that are digits. An untrained model writes digits in about a fifth of
its characters (the tokenizer has ~200 digit tokens in 1024), so the reward is dense from the very
first step, and group-centred RL pushes it towards 1 within tens of steps on CPU.

A reward function is ``(prompt: str, completion: str) -> float``. Its result is checked: a raise or
a non-finite value is a ``RewardError`` naming the function and the prompt, which stops the run
(after journaling) instead of training on garbage.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.errors import ConfigError, FatalError

RewardFn = Callable[[str, str], float]


class RewardError(FatalError):
    """The reward function raised or returned something that is not a finite number."""


@dataclass(frozen=True)
class Example:
    prompt: str
    answer: str = ""  # a demonstration (SFT) or reference answer; may be empty for RL-only tasks


@dataclass(frozen=True)
class Task:
    name: str
    train: tuple[Example, ...]
    eval: tuple[Example, ...]
    reward: RewardFn
    reward_name: str

    def train_batch(self, step: int, size: int, seed: int) -> list[Example]:
        """The prompts of one step: deterministic in (seed, step), so a redone step sees the same data."""
        rng = random.Random(f"{seed}:{step}")
        return [self.train[rng.randrange(len(self.train))] for _ in range(size)]


# ---- the bundled demo -------------------------------------------------------------------------

_TEMPLATES = (
    "Write a number about {w}.",
    "How many {w}s are there?",
    "Give me a number for {w}.",
    "Count the {w}.",
    "What number is {w}?",
    "Say a number, not {w}.",
)
_TRAIN_WORDS = [
    "apple",
    "banana",
    "cherry",
    "delta",
    "echo",
    "forest",
    "garden",
    "harbor",
    "island",
    "jungle",
    "kettle",
    "lemon",
    "mountain",
    "needle",
    "orange",
    "pepper",
    "quartz",
    "river",
    "silver",
    "tiger",
    "umbrella",
    "violet",
    "window",
    "yellow",
]
_EVAL_WORDS = ["zebra", "cat", "dog", "red", "blue", "green", "black", "white"]


def digit_fraction(prompt: str, completion: str) -> float:
    """Fraction of the completion's non-space characters that are digits (0 for an empty answer)."""
    chars = [c for c in completion if not c.isspace()]
    return sum(c.isdigit() for c in chars) / len(chars) if chars else 0.0


def _digits_task() -> Task:
    rng = random.Random(0)

    def examples(words: Sequence[str]) -> tuple[Example, ...]:
        out = []
        for word in words:
            for template in _TEMPLATES:
                out.append(Example(template.format(w=word), f"{rng.randrange(100)} {rng.randrange(100)}"))
        return tuple(out)

    return Task("digits", examples(_TRAIN_WORDS), examples(_EVAL_WORDS), digit_fraction, "digit_fraction")


def exact_match(answer: str) -> RewardFn:
    def reward(prompt: str, completion: str) -> float:
        return 1.0 if completion.strip() == answer.strip() else 0.0

    return reward


def _jsonl_task(path: Path) -> Task:
    """``{"prompt": ..., "answer": ...}`` per line; the last fifth (at most 64) is held out for eval."""
    rows: list[Example] = []
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise ConfigError(f"task: cannot read dataset {path}: {exc}") from None
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
            rows.append(Example(str(obj["prompt"]), str(obj.get("answer", ""))))
        except (ValueError, KeyError, TypeError) as exc:
            raise ConfigError(
                f"task: {path} line {number}: expected {{'prompt', 'answer'}} ({exc})"
            ) from None
    if len(rows) < 2:
        raise ConfigError(f"task: {path} needs at least 2 examples, has {len(rows)}")
    n_eval = max(1, min(64, len(rows) // 5))
    answers = {ex.prompt: ex.answer for ex in rows}

    def reward(prompt: str, completion: str) -> float:
        return exact_match(answers.get(prompt, ""))(prompt, completion)

    return Task(path.stem, tuple(rows[:-n_eval]), tuple(rows[-n_eval:]), reward, "exact_match")


def load_reward(ref: str) -> tuple[RewardFn, str]:
    """Import ``package.module:function``."""
    module_name, _, attr = ref.partition(":")
    try:
        fn = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"reward: cannot import {ref!r}: {exc}") from None
    if not callable(fn):
        raise ConfigError(f"reward: {ref!r} is not callable")
    return fn, ref


def load_task(name: str, reward: str | None = None) -> Task:
    if name == "digits":
        task = _digits_task()
    elif name.endswith(".jsonl"):
        task = _jsonl_task(Path(name))
    else:
        raise ConfigError(f"task: unknown task {name!r} (bundled: 'digits'; or a path to a .jsonl dataset)")
    if reward is not None:
        fn, fn_name = load_reward(reward)
        task = Task(task.name, task.train, task.eval, fn, fn_name)
    return task


def score(task: Task, prompt: str, completion: str) -> float:
    """Call the task's reward and insist on a finite number."""
    return score_with(task.reward, task.reward_name, prompt, completion)


def score_with(reward: RewardFn, reward_name: str, prompt: str, completion: str) -> float:
    try:
        value: Any = reward(prompt, completion)
    except Exception as exc:
        raise RewardError(
            f"reward function {reward_name} raised {type(exc).__name__}: {exc} (prompt {prompt!r})"
        ) from exc
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise RewardError(
            f"reward function {reward_name} returned {value!r}, not a finite number (prompt {prompt!r})"
        )
    return float(value)


def score_pairs(reward: RewardFn, reward_name: str, pairs: Sequence[tuple[str, str]]) -> list[float]:
    """Score (prompt, completion) pairs in order: the unit of work handed to a worker thread or process."""
    return [score_with(reward, reward_name, p, c) for p, c in pairs]


def eval_set_json(task: Task, size: int) -> tuple[list[dict[str, str]], str]:
    """The stored evaluation prompt set and its sha256 (of the exact bytes written to the run dir)."""
    rows = [{"prompt": ex.prompt, "answer": ex.answer} for ex in task.eval[:size]]
    data = "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows)
    return rows, hashlib.sha256(data.encode()).hexdigest()

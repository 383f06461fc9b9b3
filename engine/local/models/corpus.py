"""A small fixed text corpus for training the embedded tokenizer offline.

It covers English prose, digits and arithmetic, code-ish punctuation and the chat markup, so the
byte-level BPE learns useful merges. Generated deterministically: the same corpus every time.
"""

from __future__ import annotations

import random

_PROSE = """\
The quick brown fox jumps over the lazy dog. A training loop requests a trainer and a deployment,
waits for both, trains with a custom objective, saves a checkpoint, loads it into the deployment,
samples through the deployment, evaluates, records metrics and decides what to do next.
Reinforcement learning from verifiable rewards checks each answer with a program. The model
answers questions, counts letters, adds numbers, reverses words and sorts lists. Good answers earn
a reward of one; wrong answers earn zero. The policy improves when the advantage is positive.
Hello! How are you today? I am fine, thank you. What is the answer? The answer is forty two.
Please write a short story about a robot who learns to paint. Once upon a time there was a robot.
user assistant system question answer reward score step eval train sample sync checkpoint delta
"""

_WORDS = (
    "apple banana cherry delta echo forest garden harbor island jungle kettle lemon mountain "
    "needle orange pepper quartz river silver tiger umbrella violet window yellow zebra cat dog "
    "red blue green black white one two three four five six seven eight nine ten"
).split()


def corpus(seed: int = 0, lines: int = 4000) -> list[str]:
    rng = random.Random(seed)
    out = _PROSE.splitlines()
    for _ in range(lines):
        kind = rng.randrange(5)
        if kind == 0:
            a, b = rng.randrange(100), rng.randrange(100)
            out.append(f"What is {a} + {b}? The answer is {a + b}.")
        elif kind == 1:
            word = rng.choice(_WORDS)
            out.append(f"Reverse the word {word}: {word[::-1]}")
        elif kind == 2:
            xs = [rng.randrange(10) for _ in range(rng.randrange(3, 8))]
            out.append(f"Sort {' '.join(map(str, xs))} -> {' '.join(map(str, sorted(xs)))}")
        elif kind == 3:
            out.append(" ".join(rng.choice(_WORDS) for _ in range(rng.randrange(4, 12))))
        else:
            out.append(f"<|im_start|>user\n{rng.choice(_WORDS)}<|im_end|>\n<|im_start|>assistant\n")
    return out

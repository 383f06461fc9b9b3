"""Split one forward_backward into micro-batches whose activations fit a memory budget.

On the CPU, attention keeps a ``[rows, heads, T, T]`` probability tensor per layer for the backward
pass, so memory grows with the square of the padded length: one 1.8k-token datum on ``small`` costs
~0.65 GB (measured), and a batch of sixteen guess_number episodes ran a trainer out of memory.
Every built-in loss is a sum of per-datum terms, so running the datums in consecutive groups and
accumulating gradients computes exactly the same loss and gradient. Metrics merge the way the tinker
client merges chunks of one request: ``:sum`` adds, ``:mean`` averages weighted by datums, ``:max`` /
``:min`` keep the extreme.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence


def activation_bytes(rows: int, width: int, layers: int, heads: int, vocab: int) -> int:
    """Estimated peak bytes of one forward+backward: attention probabilities (kept per layer, plus
    their gradient in flight) and the float32 logits, log-softmax and their gradients."""
    return rows * width * (width * layers * heads * 6 + vocab * 16)


def microbatches(
    lengths: Sequence[int], budget_bytes: int, layers: int, heads: int, vocab: int
) -> list[range]:
    """Consecutive groups of datum indices, each within ``budget_bytes`` (a datum over the budget on
    its own still gets a group of one). Pure."""
    groups: list[range] = []
    start, width = 0, 0
    for i, n in enumerate(lengths):
        wider = max(width, n)
        if i > start and activation_bytes(i - start + 1, wider, layers, heads, vocab) > budget_bytes:
            groups.append(range(start, i))
            start, wider = i, n
        width = wider
    if lengths:
        groups.append(range(start, len(lengths)))
    return groups


def merge_metrics(parts: Sequence[tuple[int, Mapping[str, float]]]) -> dict[str, float]:
    """``(datums, metrics)`` of each micro-batch -> the request's metrics."""
    total = sum(n for n, _ in parts) or 1
    out: dict[str, float] = {}
    for n, metrics in parts:
        for key, value in metrics.items():
            kind = key.rsplit(":", 1)[-1]
            if key not in out:
                out[key] = value * n / total if kind == "mean" else value
            elif kind == "mean":
                out[key] += value * n / total
            elif kind == "max":
                out[key] = max(out[key], value)
            elif kind == "min":
                out[key] = min(out[key], value)
            else:  # sum, and anything unknown: additive
                out[key] += value
    return out

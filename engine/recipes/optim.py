"""The optimizer settings both recipes train with (Adam with beta2 0.95, as RL recipes commonly use)."""

from __future__ import annotations

import tinker


def adam(learning_rate: float) -> tinker.AdamParams:
    """``tinker.AdamParams`` for one ``optim_step``; tinker's types are what the trainers speak."""
    return tinker.AdamParams(learning_rate=learning_rate, beta1=0.9, beta2=0.95, eps=1e-8)

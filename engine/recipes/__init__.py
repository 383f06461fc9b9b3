"""Recipes built from the lifecycle states: RL (``engine.recipes.rl``) and SFT
(``engine.recipes.sft``), and tasks with verifiable rewards (``engine.recipes.tasks``, including the
bundled ``digits`` demo)."""

from engine.recipes.tasks import RewardError, Task, digit_fraction, load_task

__all__ = ["RewardError", "Task", "digit_fraction", "load_task"]

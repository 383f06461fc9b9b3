"""EVALUATING: score the stored eval prompt set through the deployment, on the verified snapshot.

The row carries the sha256 of the stored prompt set (``eval_prompts.jsonl`` in the run directory)
and the snapshot identity every completion reported.
"""

from __future__ import annotations

import asyncio
import time

from engine.errors import FatalError
from engine.lifecycle.context import RunContext
from engine.lifecycle.table import State
from engine.recipes.rl import prompt_tokens, visible_text
from engine.recipes.tasks import score
from states._util import first_error


async def run(ctx: RunContext) -> State:
    cfg, c, task = ctx.config, ctx.counters, ctx.require_task()
    started = time.monotonic()

    async def one(prompt: str) -> list[float]:
        completions = await ctx.sampler.sample_with_prompt_tokens(
            prompt_tokens(ctx.tokenizer, prompt),
            n=cfg.eval.samples_per_prompt,
            max_tokens=cfg.eval.max_tokens,
            temperature=cfg.eval.temperature,
        )
        for comp in completions:
            if comp.snapshot_identity != ctx.served_identity:
                raise FatalError(
                    f"eval sample came from snapshot {comp.snapshot_identity!r}, "
                    f"expected the verified {ctx.served_identity!r}"
                )
        ctx.beat("eval prompt scored")
        return [
            score(task, prompt, visible_text(ctx.tokenizer, comp.completion_tokens)) for comp in completions
        ]

    try:
        async with asyncio.TaskGroup() as tg:
            tasks = [tg.create_task(one(row["prompt"])) for row in ctx.eval_rows]
    except BaseExceptionGroup as group:
        raise first_error(group) from group
    scores = [s for t in tasks for s in t.result()]
    value = sum(scores) / max(1, len(scores))
    row = {
        "kind": "eval",
        "step": c.step,
        "score": round(value, 6),
        "samples": len(scores),
        "prompts_sha256": ctx.eval_sha256,
        "snapshot_identity": ctx.served_identity,
        "eval_s": round(time.monotonic() - started, 4),
    }
    ctx.stats.update(eval_score=value)
    ctx.record("eval", row=row)
    ctx.counters = c.replace(evaluated_step=c.step)
    return ctx.schedule.next(ctx.counters)

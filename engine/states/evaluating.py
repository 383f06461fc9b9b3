"""EVALUATING: score the stored eval prompt set through the deployment, on the verified snapshot.

The row carries the sha256 of the stored prompt set (``eval_prompts.jsonl`` in the run directory)
and the snapshot identity every completion was generated with (checked like SAMPLING's).
"""

from __future__ import annotations

import asyncio
import time

from engine.recipes.rl import prompt_tokens, visible_text
from engine.run.context import RunContext
from engine.run.records import EvalCommitted
from engine.states._util import first_error, verify_identities


async def run(ctx: RunContext) -> None:
    cfg, c = ctx.config, ctx.counters
    sampler, tokenizer = ctx.live_sampler(), ctx.tokenizer
    started = time.monotonic()
    reported: list[str | None] = []

    async def one(prompt: str) -> list[float]:
        ids = await ctx.user_code.in_thread(prompt_tokens, tokenizer, prompt)
        completions = await sampler.sample_with_prompt_tokens(
            ids,
            n=cfg.eval.samples_per_prompt,
            max_tokens=cfg.eval.max_tokens,
            temperature=cfg.eval.temperature,
        )
        reported.extend(comp.snapshot_identity for comp in completions)
        texts = [visible_text(tokenizer, comp.completion_tokens) for comp in completions]
        scores = await ctx.user_code.rewards([(prompt, t) for t in texts])
        ctx.beat("eval prompt scored")
        return scores

    try:
        async with asyncio.TaskGroup() as tg:
            tasks = [tg.create_task(one(row["prompt"])) for row in ctx.eval_rows]
    except BaseExceptionGroup as group:
        raise first_error(group)  # noqa: B904 - keeps the error's own cause; the group is its context
    await verify_identities(ctx, reported, what="eval samples")
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
    ctx.record(EvalCommitted(row))
    ctx.counters = c.evaluated()

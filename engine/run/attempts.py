"""A run as a sequence of attempts: each a generation of the run on the resume path, the next one
started when the recovery policy (engine.run.recovery) heals what failed the last.

``run_attempt`` is one generation: it journals its start, builds the ``RunContext`` from the replayed
journal, and drives the learner (and, with ``rl.async_rollouts``, the rollout machine) under a Runner
whose states are watched by the liveness watch (engine.run.liveness). ``run_attempts`` loops: a
failed attempt's clients are closed (bounded: a lost trainer cannot say goodbye), the policy decides
(engine.run.recovering journals, logs and publishes it), its action is carried out through the
backends seam, the journal is replayed and the derived files rebuilt, and the next generation
restores the last committed full state -- so a recovery keeps the guarantees of a resume.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from engine.backends.base import Planes
from engine.config import RunConfig
from engine.journal import Journal
from engine.lifecycle.events import EventBus
from engine.lifecycle.runner import Fact, FaultPlan, RunFailed, Runner, StateLimits
from engine.lifecycle.schedule import Schedule
from engine.lifecycle.table import INITIAL, State
from engine.log import get_logger
from engine.run.context import RunContext
from engine.run.liveness import LivenessLimits, LivenessWatch
from engine.run.offload import UserCode
from engine.run.records import LEDGER_KINDS, EvalCommitted, StepCommitted
from engine.run.recovering import AttemptEnd, EventRelay, Recoverer, RecoveryFailed
from engine.run.recovery import RecoveryBudget
from engine.run.rollouts import AsyncRollouts
from engine.run.rundir import LEDGER, METRICS, RunDir

log = get_logger("engine.run")
CLOSE_AFTER_FAILURE_S = 2.0  # closing a session whose trainer is gone: it cannot say goodbye


def schedule_of(config: RunConfig) -> Schedule:
    """The run's Schedule, from its intervals and recipe."""
    return Schedule(
        max_steps=config.max_steps,
        sync_every=config.intervals.sync_every,
        eval_every=config.intervals.eval_every,
        checkpoint_every=config.intervals.checkpoint_every,
        # async RL: the rollout machine samples, the learner never enters SAMPLING
        needs_rollouts=config.recipe == "rl" and config.rl.async_rollouts is None,
    )


def state_limits(config: RunConfig) -> tuple[StateLimits, dict[State, StateLimits]]:
    default = StateLimits(config.limits.state_timeout_s, config.limits.stall_s)
    ready = config.limits.ready_timeout_s + 300.0  # the waits plus connecting and restoring state
    waiting = StateLimits(max(default.timeout_s, ready), max(default.stall_s, ready))
    return default, {State.WAITING: waiting, State.REQUESTING: waiting}


@dataclass
class LiveView:
    """What a RunHandle may read of its run while it goes (set by each attempt)."""

    ctx: RunContext | None = None


@dataclass
class Attempt:
    """What one attempt (a generation of the run) is handed; built once per run by ``_execute``."""

    config: RunConfig
    rd: RunDir
    run_id: str
    task: Any
    eval_rows: list[dict[str, str]]
    eval_sha: str
    planes: Planes
    user_code: UserCode
    journal: Journal
    fanout: Any
    handlers: dict[State, Any]
    sample_rollouts: Any
    live: LiveView | None
    last_ctx: RunContext | None = None  # the context of the attempt running or last run


async def run_attempt(a: Attempt, resume: Any, relay: EventRelay) -> RunContext:
    """One generation: journal its start, build its context, run the learner (and the rollout
    machine); returns the context, whose clients the caller closes. Raises what failed it."""
    config, rd = a.config, a.rd
    generation = resume.generation + 1
    await a.journal.append(
        {"event": "start", "generation": generation, "run_id": a.run_id,
         "resume_from": resume.step if resume.started else None}
    )  # fmt: skip
    if resume.started:
        log.info("resuming run", run_dir=str(rd.path), step=resume.step, generation=generation)
    ctx = RunContext(
        config=config,
        run_dir=rd,
        run_id=a.run_id,
        schedule=schedule_of(config),
        task=a.task,
        planes=a.planes,
        user_code=a.user_code,
        resume=resume,
        generation=generation,
        eval_rows=a.eval_rows,
        eval_sha256=a.eval_sha,
    )
    if a.live is not None:
        a.live.ctx = ctx
    a.last_ctx = ctx
    default, limits = state_limits(config)
    fault = FaultPlan.from_env()
    overlap = config.rl.async_rollouts if config.recipe == "rl" else None
    if overlap is not None:
        ctx.async_rollouts = AsyncRollouts(
            ctx, overlap.max_staleness, a.journal, events=relay.attempt, limits=default, fault=fault
        )

    async def after_exit(state: State, facts: list[Fact]) -> None:
        if ctx.async_rollouts is not None:
            if state is State.WAITING:
                ctx.async_rollouts.start(a.sample_rollouts)
            ctx.async_rollouts.learner_moved()
        rows = [dict(f.row) for f in facts if isinstance(f, StepCommitted | EvalCommitted)]
        ledger = [f.to_json() for f in facts if f.kind in LEDGER_KINDS]
        if rows or ledger:  # most states commit neither: no thread hop for them

            def write() -> None:
                rd.append(METRICS, rows)
                rd.append(LEDGER, ledger)

            await asyncio.to_thread(write)
        a.fanout.put(rows)  # never blocks: a full queue drops the row for that sink

    recovery = config.recovery
    watch = LivenessWatch(
        a.planes,
        lambda: (ctx.trainer_ref, ctx.deployment_ref),
        LivenessLimits(every_s=recovery.health_every_s, unreachable_after_s=recovery.unreachable_after_s),
    )
    runner: Runner[RunContext] = Runner(
        a.handlers,
        a.journal,
        decide=lambda state, c: c.schedule.after(state, c.counters),
        events=relay.attempt,
        limits=limits,
        default_limits=default,
        run_id=a.run_id,
        after_exit=after_exit,
        fault=fault,
        liveness=watch.watch if recovery.health_every_s > 0 else None,
    )
    try:
        await runner.run(ctx, INITIAL)
        if ctx.async_rollouts is not None:
            await ctx.async_rollouts.finish(default.stall_s)
    finally:
        if ctx.async_rollouts is not None:
            await asyncio.shield(ctx.async_rollouts.stop())
    return ctx


def budget_of(config: RunConfig) -> RecoveryBudget:
    r = config.recovery
    return RecoveryBudget(
        enabled=r.enabled,
        max_per_hour=r.max_per_hour,
        max_consecutive=r.max_consecutive,
        deadline_s=r.deadline_s,
        backoff_s=r.backoff_s,
    )


async def run_attempts(a: Attempt, resume: Any, bus: EventBus) -> RunContext:
    """Attempts until one finishes (returns its context) or the recovery policy gives up (raises).

    Between two attempts the failed one's clients are closed, the policy's action is carried out
    (engine.run.recovering) and the journal is replayed: the next attempt is a resumed generation."""
    recoverer = Recoverer(a.planes, a.journal, bus, budget_of(a.config), run_id=a.run_id)
    high_water = resume.step
    while True:
        relay = EventRelay(bus)
        a.last_ctx = None
        try:
            return await run_attempt(a, resume, relay)
        except Exception as exc:
            ctx = a.last_ctx
            error: BaseException = exc
        if ctx is not None:
            await asyncio.shield(ctx.close_clients(timeout_s=CLOSE_AFTER_FAILURE_S))
        failed_step = error.step if isinstance(error, RunFailed) else high_water
        known = resume.resources
        end = AttemptEnd(
            error,
            (ctx.trainer_ref if ctx is not None else None) or (known.trainer if known else None),
            (ctx.deployment_ref if ctx is not None else None) or (known.deployment if known else None),
            progressed=failed_step > high_water,
            generation=resume.generation + 1,
        )
        high_water = max(high_water, failed_step)
        while True:
            decision = await recoverer.decide(end)
            if decision.action == "fail":
                relay.give_up()
                if not recoverer.journaled(decision):  # a plain failure: not the policy's to heal
                    raise error
                raise RecoveryFailed(decision) from error
            try:
                await recoverer.act(decision, end)
                break
            except Exception as act_error:  # the action failed: a failure like any other
                log.warning("recovery action failed", action=decision.action, error=str(act_error))
                end = AttemptEnd(act_error, end.trainer, end.deployment, False, end.generation)
        resume = await asyncio.to_thread(a.rd.replay)
        await asyncio.to_thread(a.rd.rebuild_derived, resume)

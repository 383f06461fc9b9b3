"""Running an experiment from Python: ``summary = await engine.run(config)``.

``run`` is one await inside any event loop; ``start`` returns a ``RunHandle`` for programs that
want to watch (``async for event in handle.events()``) or stop (``handle.cancel()``) a run while
it goes. A run directory that holds an unfinished run is resumed (see engine.run.replay for the
commit protocol); a finished one returns its summary without doing anything.

The orchestration, in order: pick and pin the run directory, replay its journal, load the task (off
the loop), open the two backends (engine.run.planes), then run attempts (engine.run.attempts): each
hands the states to the lifecycle Runner, which asks the Schedule for every transition; an attempt
that fails is healed by the recovery policy (engine.run.recovery) when it can be, and the next one
resumes from the journal. Derived files follow each committed exit, and its
metrics rows go to the metric sinks (engine.run.sinks); report.html (engine.report) is written when
the run ends. With ``rl.async_rollouts`` the learner runs without SAMPLING and the rollout machine
(engine.run.rollouts) starts beside it once WAITING committed; every learner exit wakes it, and it is
stopped with the run.

Cancellation stops cleanly: the current state's in-flight requests are cancelled, the journal
records where the run was cancelled, clients are closed, and the trainer job and deployment are
kept (default) or deleted per ``keep_resources``. An embedded stack is always stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.backends.base import Planes
from engine.config import RunConfig, dump_config, validate_config
from engine.errors import ConfigError
from engine.journal import Journal
from engine.lifecycle.events import EventBus, LifecycleEvent
from engine.lifecycle.table import State
from engine.log import get_logger
from engine.recipes.tasks import eval_set_json, load_task
from engine.run.attempts import Attempt, LiveView, run_attempts
from engine.run.attempts import schedule_of as schedule_of  # a run's Schedule, from its config
from engine.run.context import RunContext
from engine.run.offload import UserCode
from engine.run.planes import ControlPlaneConnection, open_planes
from engine.run.records import EvalCommitted, StepCommitted
from engine.run.rundir import METRICS, RunDir, default_run_dir
from engine.run.sinks import MetricSink, open_fanout
from engine.sampling.controllers import ConcurrencyController

log = get_logger("engine.run")


@dataclass
class RunSummary:
    run_dir: str
    run_id: str
    status: str  # done | failed | cancelled
    steps: int
    eval_score_first: float | None
    eval_score_last: float | None
    wall_s: float
    generation: int
    served_identity: str | None = None
    error: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "run_dir": self.run_dir,
            "run_id": self.run_id,
            "status": self.status,
            "steps": self.steps,
            "eval_score_first": self.eval_score_first,
            "eval_score_last": self.eval_score_last,
            "wall_s": round(self.wall_s, 3),
            "generation": self.generation,
            "served_identity": self.served_identity,
            "error": self.error,
            **self.extra,
        }


def _run_id(config: RunConfig, run_dir: RunDir) -> str:
    if config.run_id:
        return config.run_id
    slug = "".join(ch if ch.isalnum() else "-" for ch in run_dir.path.name.lower()).strip("-")
    return (slug[:40].strip("-") or "run").replace("--", "-")


def _prepare_dir(
    config: RunConfig | None, run_dir: str | os.PathLike[str] | None
) -> tuple[RunConfig, RunDir]:
    """Pick the run directory; a directory that already holds a run supplies (and pins) the config."""
    target = run_dir or (config.run_dir if config else None) or (default_run_dir(config) if config else None)
    if target is None:
        raise ConfigError("run_dir: required to resume a run")
    rd = RunDir(target)
    if rd.exists():
        stored = rd.read_config()
        if config is not None:
            given = dump_config(config.model_copy(update={"run_dir": None}))
            if given != dump_config(stored.model_copy(update={"run_dir": None})):
                raise ConfigError(
                    f"run_dir: {rd.path} holds a run with a different config; resume it with "
                    "`hotloop resume` or choose another run_dir"
                )
        return stored, rd
    if config is None:
        raise ConfigError(f"run_dir: {rd.path} is not a run directory (no config.yaml)")
    config = config.model_copy(update={"run_dir": rd.path})
    rd.write_config(config)
    return config, rd


def summarize(rd: RunDir, status: str, started: float, generation: int, **kw: Any) -> RunSummary:
    rows = rd.read_rows(METRICS)
    evals = [r["score"] for r in rows if r.get("kind") == EvalCommitted.kind]
    steps = max((int(r["step"]) for r in rows if r.get("kind") == StepCommitted.kind), default=0)
    return RunSummary(
        run_dir=str(rd.path),
        run_id=kw.pop("run_id", ""),
        status=status,
        steps=steps,
        eval_score_first=evals[0] if evals else None,
        eval_score_last=evals[-1] if evals else None,
        wall_s=time.monotonic() - started,
        generation=generation,
        **kw,
    )


async def _execute(
    given: RunConfig | None,
    run_dir: str | os.PathLike[str] | None,
    bus: EventBus,
    connection: ControlPlaneConnection | None,
    planes: Planes | None,
    sinks: Sequence[MetricSink] = (),
    live: LiveView | None = None,
) -> RunSummary:
    started = time.monotonic()
    config, rd = await asyncio.to_thread(_prepare_dir, given, run_dir)
    resume = await asyncio.to_thread(rd.replay)
    run_id = _run_id(config, rd)
    if resume.finished:
        log.info("run already finished", run_dir=str(rd.path))
        return await asyncio.to_thread(summarize, rd, "done", started, resume.generation, run_id=run_id)
    # A JSONL dataset is read and a user's reward module imported: file I/O, off the caller's loop.
    task = await asyncio.to_thread(load_task, config.task, config.reward)
    eval_rows, eval_sha = eval_set_json(task, config.eval.prompts)
    await asyncio.to_thread(rd.store_eval_prompts, eval_rows, eval_sha)
    await asyncio.to_thread(rd.rebuild_derived, resume)
    journal = await asyncio.to_thread(Journal, rd.journal_path)  # may fsync: off the loop
    status, error, served = "failed", None, None
    attempt: Attempt | None = None
    try:
        async with contextlib.AsyncExitStack() as stack:
            user_code = UserCode(task, config.user_code.executor, config.user_code.workers)
            stack.callback(user_code.close)
            # Metric sinks (engine.run.sinks) drain on their own threads; closing waits a bounded time.
            fanout = await asyncio.to_thread(
                open_fanout, config, rd.path, run_id, resume.generation + 1, sinks
            )
            stack.push_async_callback(asyncio.to_thread, fanout.close)
            if planes is None:
                planes = await open_planes(config, rd.path, stack, connection)
            # The state modules import tinker and torch (seconds, the first time): not on the loop.
            handlers, sample_rollouts = await asyncio.to_thread(_handlers)
            attempt = Attempt(
                config, rd, run_id, task, eval_rows, eval_sha, planes, user_code, journal, fanout,
                handlers, sample_rollouts, live,
            )  # fmt: skip
            ctx: RunContext | None = None
            try:
                ctx = await run_attempts(attempt, resume, bus)
                status = "done"
            except asyncio.CancelledError:
                status = "cancelled"
                raise
            except Exception as exc:
                error = str(exc)
                raise
            finally:
                ctx = ctx or attempt.last_ctx
                if ctx is not None:
                    served = ctx.served_identity
                    await asyncio.shield(ctx.aclose(delete_resources=not config.keep_resources))
    except Exception as exc:
        error = error or str(exc)
        raise
    finally:
        await asyncio.to_thread(journal.close)
        # summarize reads the whole metrics.jsonl (one row per step): off the loop like the other I/O.
        generation = (await asyncio.to_thread(rd.replay)).generation
        summary = await asyncio.to_thread(
            summarize,
            rd,
            status,
            started,
            generation,
            run_id=run_id,
            served_identity=served,
            error=error,
        )
        await asyncio.to_thread(rd.write_summary, summary.as_dict())
        await _write_report(rd)
    return summary


async def _write_report(rd: RunDir) -> None:
    """The run's report.html (engine.report), off the loop; a report that cannot be written is
    logged and never fails the run."""
    try:
        from engine.report import write_report

        await asyncio.to_thread(write_report, rd.path)
    except Exception as exc:
        log.warning("run report not written", run_dir=str(rd.path), error=f"{type(exc).__name__}: {exc}")


def _handlers() -> tuple[dict[State, Any], Any]:
    from engine.states import handlers, rollout

    return handlers(), rollout.sample


class RunHandle:
    """A run in progress: watch it, cancel it, await its summary."""

    def __init__(self, task: asyncio.Task[RunSummary], bus: EventBus, live: LiveView | None = None) -> None:
        self.task = task
        self.bus = bus
        self._live = live or LiveView()

    @property
    def concurrency_controller(self) -> ConcurrencyController | None:
        """The live sampler's concurrency controller (``window_size``, ``in_flight``) while the run
        has a sampler; None before WAITING made one and after the run closed it."""
        ctx = self._live.ctx
        sampler = ctx.sampler if ctx is not None else None
        return sampler.concurrency_controller if sampler is not None else None

    def events(self) -> AsyncIterator[LifecycleEvent]:
        return self.bus.subscribe()

    def cancel(self) -> None:
        self.task.cancel()

    async def wait(self) -> RunSummary:
        return await self.task

    def __await__(self) -> Any:
        return self.task.__await__()


def start(
    config: RunConfig | dict[str, Any] | None = None,
    *,
    run_dir: str | os.PathLike[str] | None = None,
    on_event: Callable[[LifecycleEvent], None] | None = None,
    connection: ControlPlaneConnection | None = None,
    planes: Planes | None = None,
    sinks: Sequence[MetricSink] = (),
) -> RunHandle:
    """Start a run (or resume the one in ``run_dir``) as a task on the running loop.

    The backends come from the config, unless the caller passes a ``connection`` to a control plane it
    already runs, or its own ``planes`` (any objects satisfying engine.backends.base's Protocols; the
    caller then owns and closes them). ``sinks`` receive the metrics rows besides the sinks the config
    selects (engine.run.sinks.MetricSink; each on its own thread).
    """
    cfg = validate_config(config) if config is not None else None
    bus = EventBus()
    if on_event is not None:
        bus.add_callback(on_event)
    live = LiveView()
    task = asyncio.get_running_loop().create_task(
        _execute(cfg, run_dir, bus, connection, planes, sinks, live), name="hotloop-run"
    )
    # The Runner publishes a terminal event only for failures inside a state; a run that ends before
    # or outside one (bad run dir, the embedded stack not starting) must still end subscriptions.
    task.add_done_callback(lambda _: bus.close())
    return RunHandle(task, bus, live)


async def run(
    config: RunConfig | dict[str, Any] | None = None,
    *,
    run_dir: str | os.PathLike[str] | None = None,
    on_event: Callable[[LifecycleEvent], None] | None = None,
    connection: ControlPlaneConnection | None = None,
    planes: Planes | None = None,
    sinks: Sequence[MetricSink] = (),
) -> RunSummary:
    """Run an experiment to the end and return its summary (raises RunFailed if it fails)."""
    return await start(
        config, run_dir=run_dir, on_event=on_event, connection=connection, planes=planes, sinks=sinks
    ).wait()


async def resume(run_dir: str | os.PathLike[str], **kwargs: Any) -> RunSummary:
    """Resume the run in ``run_dir`` with its stored config."""
    return await run(None, run_dir=Path(run_dir), **kwargs)

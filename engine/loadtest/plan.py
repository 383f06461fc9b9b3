"""From parsed options to a plan of cells, and the async driver that runs it (sweeps, search)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
from dataclasses import dataclass, field
from typing import Any

from engine.errors import ConfigError
from engine.loadtest.client import Target
from engine.loadtest.metrics import GoodputTargets, passes, summarize_cell
from engine.loadtest.output import RunOutput, load_description
from engine.loadtest.progress import LiveProgress
from engine.loadtest.prompts import Prompt, load_jsonl, load_tokenizer, synthetic, tokenizer_vocab
from engine.loadtest.runner import AbortPolicy, CellResult, CellRunner, new_session
from engine.loadtest.schedules import (
    AdaptiveLoad,
    ClosedLoop,
    LoadSpec,
    OpenLoop,
    parse_number_list,
    validate_load,
)
from engine.loadtest.search import SearchSpace, SearchState, next_probe, sweep_answer


@dataclass
class Plan:
    cells: list[LoadSpec] = field(default_factory=list)
    search: SearchSpace | None = None
    targets: GoodputTargets = field(default_factory=GoodputTargets)
    min_good_fraction: float = 0.95


def make_load(kind: str, value: float, args: argparse.Namespace) -> LoadSpec:
    if kind == "rate":
        return OpenLoop(value, args.arrival, args.burstiness, args.seed)
    return ClosedLoop(int(value))


def build_plan(args: argparse.Namespace, targets: GoodputTargets) -> Plan:
    if args.requests is None and args.duration is None:
        raise ConfigError("give --requests N or --duration S (per cell)")
    if args.requests is not None and args.requests < 1:
        raise ConfigError(f"--requests must be >= 1, got {args.requests}")
    if args.duration is not None and args.duration <= 0:
        raise ConfigError(f"--duration must be > 0, got {args.duration}")
    if not 0 < args.min_good_fraction <= 1:
        raise ConfigError(f"--min-good-fraction must be in (0, 1], got {args.min_good_fraction}")
    plan = Plan(targets=targets, min_good_fraction=args.min_good_fraction)
    if args.concurrency is not None:
        plan.cells = [ClosedLoop(args.concurrency)]
    elif args.rate is not None:
        plan.cells = [OpenLoop(args.rate, args.arrival, args.burstiness, args.seed)]
    elif args.adaptive:
        plan.cells = [
            AdaptiveLoad(
                args.initial_window,
                args.min_window,
                args.max_window,
                args.prefill_queue_target,
                args.adjustment_interval,
            )
        ]
    elif args.sweep_concurrency:
        values = parse_number_list(args.sweep_concurrency, option="--sweep-concurrency", integer=True)
        plan.cells = [ClosedLoop(int(v)) for v in values]
    elif args.sweep_rate:
        plan.cells = [
            make_load("rate", v, args) for v in parse_number_list(args.sweep_rate, option="--sweep-rate")
        ]
    elif args.search:
        if not targets.any():
            raise ConfigError("--search needs --goodput targets (e.g. --goodput ttft:500 e2e:2000)")
        if not args.search_range:
            raise ConfigError("--search needs --search-range LO:HI")
        try:
            lo_s, hi_s = args.search_range.split(":")
            lo, hi = float(lo_s), float(hi_s)
        except ValueError:
            raise ConfigError(f"--search-range: expected LO:HI, got {args.search_range!r}") from None
        plan.search = SearchSpace(args.search, lo, hi, args.search_tolerance, args.search_probes)
        plan.search.validate()
        if args.compare_sweep:
            values = parse_number_list(
                args.compare_sweep, option="--compare-sweep", integer=args.search == "concurrency"
            )
            plan.cells = [make_load(args.search, v, args) for v in values]
    for load in plan.cells:
        validate_load(load)
    return plan


def load_prompts(args: argparse.Namespace) -> list[Prompt]:
    tokenizer = load_tokenizer(args.tokenizer)
    if args.prompts is not None:
        return load_jsonl(args.prompts, tokenizer, default_max_tokens=args.output_tokens)
    vocab, special = tokenizer_vocab(tokenizer)
    return synthetic(
        count=args.num_prompts,
        input_tokens=args.input_tokens,
        output_tokens=args.output_tokens,
        input_spread=args.input_spread,
        output_spread=args.output_spread,
        vocab_size=vocab,
        exclude_ids=special,
        seed=args.seed,
    )


def execute(
    plan: Plan, args: argparse.Namespace, target: Target, prompts: list[Prompt], output: RunOutput
) -> tuple[str, str | None, dict[str, Any] | None]:
    """Run the plan; returns (status, error, search summary). Records land in ``output`` as they finish.

    SIGTERM stops the run like Ctrl-C does: in-flight requests are cancelled and recorded, and the
    caller writes everything measured so far.
    """

    async def guarded() -> tuple[str, str | None, dict[str, Any] | None]:
        task = asyncio.current_task()
        loop = asyncio.get_running_loop()
        terminated = False

        def on_term() -> None:
            nonlocal terminated
            terminated = True
            if task is not None:
                task.cancel()

        with contextlib.suppress(NotImplementedError, RuntimeError):  # no signals off the main thread
            loop.add_signal_handler(signal.SIGTERM, on_term)
        try:
            return await run_plan(plan, args, target, prompts, output)
        except asyncio.CancelledError:
            if not terminated:
                raise
            return "interrupted", "terminated by SIGTERM", None
        finally:
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.remove_signal_handler(signal.SIGTERM)

    return asyncio.run(guarded())


async def run_plan(
    plan: Plan, args: argparse.Namespace, target: Target, prompts: list[Prompt], output: RunOutput
) -> tuple[str, str | None, dict[str, Any] | None]:
    progress = LiveProgress(enabled=not args.no_progress)

    def on_record(rec: Any) -> None:
        output.add(rec)
        progress.on_record(rec)

    async with new_session() as session:
        runner = CellRunner(
            session,
            target,
            prompts,
            max_requests=args.requests,
            duration_s=args.duration,
            drain_timeout_s=args.drain_timeout,
            on_record=on_record,
            abort_policy=lambda: AbortPolicy(first_failures=args.abort_after),
        )
        if args.warmup:
            warm = CellRunner(
                session,
                target,
                prompts,
                max_requests=args.warmup,
                duration_s=None,
                drain_timeout_s=args.drain_timeout,
                abort_policy=lambda: AbortPolicy(first_failures=min(args.abort_after, args.warmup)),
            )
            res = await warm.run(ClosedLoop(1), label="warmup", index_base=-args.warmup)
            if res.aborted:
                return "aborted", f"warmup failed: {res.aborted}", None
        next_index = 0

        async def run_cell(load: LoadSpec, label: str) -> CellResult:
            nonlocal next_index
            result = output.new_cell(CellResult(label=label, load=load))
            progress.start_cell(label, args.requests, load.rate if isinstance(load, OpenLoop) else None)
            await runner.run(load, index_base=next_index, result=result)
            next_index += len(result.records)
            output.flush()
            return result

        def cell_passes(result: CellResult) -> bool:
            summary = summarize_cell(
                result.records, label=result.label, load=load_description(result.load), targets=plan.targets
            )
            return passes(summary, plan.min_good_fraction)

        with progress:
            prefix = "sweep " if plan.search is not None else ""
            sweep_points: list[tuple[float, bool]] = []
            for load in plan.cells:
                result = await run_cell(load, prefix + load.label)
                if result.aborted:
                    return "aborted", result.aborted, None
                sweep_points.append((load.value, cell_passes(result)))
            if plan.search is None:
                return "ok", None, None
            state = SearchState(plan.search)
            while (value := next_probe(state)) is not None:
                load = make_load(plan.search.kind, value, args)
                result = await run_cell(load, "search " + load.label)
                if result.aborted:
                    return "aborted", result.aborted, _search_summary(plan, state, sweep_points)
                state.record(value, cell_passes(result))
            return "ok", None, _search_summary(plan, state, sweep_points)


def _search_summary(plan: Plan, state: SearchState, sweep: list[tuple[float, bool]]) -> dict[str, Any]:
    space = plan.search
    assert space is not None
    out: dict[str, Any] = {
        "kind": space.kind,
        "range": [space.lo, space.hi],
        "tolerance": space.rel_tol,
        "min_good_fraction": plan.min_good_fraction,
        "probes": [[v, ok] for v, ok in state.probes],
        "answer": state.best,
    }
    if sweep:
        out["sweep_points"] = [[v, ok] for v, ok in sweep]
        out["sweep_answer"] = sweep_answer(sweep)
    return out

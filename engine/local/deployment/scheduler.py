"""Continuous batching: a bounded waiting queue (admitted fairly across clients, see ``fairness``)
and a running batch that sequences join and leave between decode steps, driven by ONE worker thread
that owns the model.

One iteration of the worker: drop cancelled sequences; if a weight swap is pending and the batch has
drained, apply it (SYNC transition: nothing new is admitted while a swap waits, so in-flight
sequences finish on the old weights); admit waiting sequences (``plan_admission``), prefill them
as one left-padded batch (identical prompts once) and sample their first token; run one decode
step over every running row; remove finished rows. Results go back to the event loop once per iteration
(``call_soon_threadsafe``), grouped per request.

A request with ``n`` choices is ``n`` independent sequences sharing one ``RequestHandle``.

Why not transformers' continuous batching (``generate_batch`` / ``init_continuous_batching``):
on CPU it measured slower (``benchmarks/bench_deployment.py --compare-transformers``, small, 32
greedy requests: ~210-400 tok/s here vs ~140-260 tok/s for it with a CPU-sized paged cache, and
15-45 tok/s with its defaults), and it does not give per-request seeds, raw plus processed
logprobs, stop strings, or a between-batches point at which to swap weights.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import threading
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from engine.local.deployment.batch_runner import BatchRunner
from engine.local.deployment.detok import TextTracker
from engine.local.deployment.fairness import fair_order
from engine.local.deployment.state import (
    QueueFullError,
    RequestHandle,
    SeqSpec,
    Timing,
    TokenOut,
    Update,
)
from engine.local.deployment.token_selection import choose_tokens, processed_logprobs, top_entries
from engine.log import get_logger

log = get_logger(__name__)


# ------------------------------------------------------------------------------ pure decisions


def plan_admission(
    waiting_prompt_lens: Sequence[int], running: int, max_batch: int, prefill_token_budget: int
) -> int:
    """How many waiting sequences (FIFO) join the batch now.

    Bounded by free slots and by the padded prefill cost (count x longest prompt) so one big
    admission does not stall the running rows for long; at least one joins whenever a slot is free.
    """
    free = max_batch - running
    count = width = 0
    for length in waiting_prompt_lens[: max(free, 0)]:
        new_width = max(width, length)
        if count and new_width * (count + 1) > prefill_token_budget:
            break
        count, width = count + 1, new_width
    return count


def finish_reason(spec: SeqSpec, completion: Sequence[int], max_positions: int) -> str | None:
    """'stop' on a stop token, 'length' at max_tokens or the context limit, else None."""
    if completion and completion[-1] in spec.stop_token_ids:
        return "stop"
    if len(completion) >= spec.max_tokens or len(spec.prompt) + len(completion) >= max_positions:
        return "length"
    return None


def retry_after_s(waiting: int, max_batch: int) -> float:
    """A hint for 429s: roughly how many batch generations are queued ahead, at least one second."""
    return float(max(1, min(30, waiting // max(max_batch, 1))))


# ------------------------------------------------------------------------------------ the worker


@dataclass
class _Seq:
    handle: RequestHandle
    index: int
    spec: SeqSpec
    tracker: TextTracker
    generator: torch.Generator | None
    timing: Timing
    completion: list[int] = field(default_factory=list)
    done: bool = False


@dataclass
class _Swap:
    identity: str
    state: Mapping[str, torch.Tensor]
    future: asyncio.Future[None]


class Scheduler:
    def __init__(
        self,
        runner: BatchRunner,
        tokenizer: Any,
        *,
        max_batch: int = 32,
        max_waiting: int = 512,
        prefill_token_budget: int = 2048,
        seed: int = 0,
        threads: int = 1,
    ) -> None:
        self.runner = runner
        self.tokenizer = tokenizer
        self.max_batch = max_batch
        self.max_waiting = max_waiting
        self.prefill_token_budget = prefill_token_budget
        self.threads = threads
        self.identity: str | None = None  # the snapshot the weights in the runner came from
        self._rng = torch.Generator().manual_seed(seed)
        self._cv = threading.Condition()
        self._waiting: deque[_Seq] = deque()
        self._rows: list[_Seq] = []
        self._swap: _Swap | None = None
        self._last_turn: dict[str, int] = {}  # client -> when it was last admitted (``fairness``)
        self._turns = 0
        self._stop = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self.steps = 0

    # ------------------------------------------------------------- event-loop side

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    @property
    def running(self) -> int:
        return len(self._rows)

    @property
    def swap_pending(self) -> bool:
        return self._swap is not None

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._run, name="hotloop-deployment-engine", daemon=True)
        self._thread.start()

    def close(self) -> None:
        with self._cv:
            self._stop = True
            self._cv.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def submit(self, handle: RequestHandle, specs: list[SeqSpec]) -> None:
        seqs = [
            _Seq(
                handle=handle,
                index=i,
                spec=spec,
                tracker=TextTracker(self.tokenizer, spec.stop_strings),
                generator=None if spec.seed is None else torch.Generator().manual_seed(spec.seed),
                timing=Timing(arrival=handle.arrival),
            )
            for i, spec in enumerate(specs)
        ]
        with self._cv:
            if len(self._waiting) + len(seqs) > self.max_waiting:
                raise QueueFullError(retry_after_s(len(self._waiting), self.max_batch))
            self._waiting.extend(seqs)
            self._cv.notify_all()

    def cancel(self, handle: RequestHandle) -> None:
        handle.cancelled = True
        with self._cv:
            self._cv.notify_all()

    def request_swap(self, identity: str, state: Mapping[str, torch.Tensor]) -> asyncio.Future[None]:
        """Queue a weight swap; the future resolves once it is applied between batches."""
        assert self._loop is not None
        future: asyncio.Future[None] = self._loop.create_future()
        with self._cv:
            if self._swap is not None:
                raise RuntimeError("a weight swap is already pending")
            self._swap = _Swap(identity, state, future)
            self._cv.notify_all()
        return future

    def withdraw_swap(self, future: asyncio.Future[None]) -> bool:
        """Take back a swap that has not been applied yet; False if it is already underway."""
        with self._cv:
            if self._swap is not None and self._swap.future is future:
                self._swap = None
                self._cv.notify_all()
                return True
        return False

    # ------------------------------------------------------------------ worker side

    def _run(self) -> None:
        torch.set_grad_enabled(False)
        # Per-thread (OpenMP) setting. One intra-op thread by default: on a shared 2-core box, two
        # spinning OpenMP threads made every step 10-50x slower whenever another process was busy.
        torch.set_num_threads(self.threads)
        while True:
            with self._cv:
                while not (self._stop or self._waiting or self._rows or self._swap):
                    self._cv.wait()
                if self._stop:
                    break
                self._waiting = deque(s for s in self._waiting if not s.handle.cancelled)
                swap = None
                if self._swap is not None and not self._rows:
                    swap, self._swap = self._swap, None
                admitted: list[_Seq] = []
                if self._swap is None and self._waiting and len(self._rows) < self.max_batch:
                    admitted = self._admit()
            updates: dict[RequestHandle, list[Update]] = {}
            try:
                if swap is not None:
                    self._apply_swap(swap)
                self._drop_rows()
                if admitted:
                    self._prefill(admitted, updates)
                    self._drop_rows()  # some finish on their first token
                if self._rows:
                    self._decode(updates)
                self._drop_rows()
                self.steps += 1
            except Exception as exc:  # the model failed: fail every affected request, keep serving
                log.exception("engine step failed", error=repr(exc))
                failed = {s.handle for s in self._rows + admitted}
                self._rows = []
                self.runner.reset()
                self._post(functools.partial(_fail, failed, RuntimeError(f"engine error: {exc}")))
            if updates:
                self._post(functools.partial(_dispatch, updates))

    def _admit(self) -> list[_Seq]:
        """Take the sequences that join the batch now (under the lock): fair across clients."""
        waiting = list(self._waiting)
        owners = [s.handle.client for s in waiting]
        ordered = [waiting[i] for i in fair_order(owners, self._last_turn)]
        count = plan_admission(
            [len(s.spec.prompt) for s in ordered], len(self._rows), self.max_batch, self.prefill_token_budget
        )
        admitted = ordered[:count]
        for seq in admitted:
            self._turns += 1
            self._last_turn[seq.handle.client] = self._turns
        taken = {id(s) for s in admitted}
        self._waiting = deque(s for s in waiting if id(s) not in taken)
        # Remember only clients still waiting: the map stays as small as the queue.
        still = {s.handle.client for s in self._waiting}
        self._last_turn = {c: t for c, t in self._last_turn.items() if c in still}
        return admitted

    def _post(self, fn: Any) -> None:
        if self._loop is not None and not self._loop.is_closed():
            with contextlib.suppress(RuntimeError):  # loop closed between the check and the call
                self._loop.call_soon_threadsafe(fn)

    def _apply_swap(self, swap: _Swap) -> None:
        def settle(exc: BaseException | None) -> None:
            if not swap.future.done():
                if exc is None:
                    swap.future.set_result(None)
                else:
                    swap.future.set_exception(exc)

        try:
            self.runner.load_weights(swap.state)
            self.identity = swap.identity
        except Exception as exc:
            self._post(functools.partial(settle, exc))
            return
        self._post(functools.partial(settle, None))

    def _drop_rows(self) -> None:
        keep = [i for i, s in enumerate(self._rows) if not (s.done or s.handle.cancelled)]
        if len(keep) != len(self._rows):
            self.runner.keep_rows(keep)
            self._rows = [self._rows[i] for i in keep]

    def _prefill(self, admitted: list[_Seq], updates: dict[RequestHandle, list[Update]]) -> None:
        start = time.perf_counter()
        concurrent = len(self._rows) + len(admitted)
        full = any(s.spec.prompt_logprobs for s in admitted)
        unique: dict[tuple[int, ...], int] = {}
        rows = [unique.setdefault(tuple(s.spec.prompt), len(unique)) for s in admitted]
        logits = self.runner.prefill([list(p) for p in unique], full_logits=full, rows=rows)
        last = logits[:, -1] if full else logits
        computed: set[int] = set()
        outs = self._sample(admitted, last)
        done = time.perf_counter()
        self._rows.extend(admitted)
        for row, (seq, out) in enumerate(zip(admitted, outs, strict=True)):
            seq.timing.scheduled, seq.timing.prefill_done, seq.timing.num_concurrent = start, done, concurrent
            # K/V shared with an identical prompt admitted with it, or taken from the prompt cache
            if rows[row] in computed or self.runner.last_hits[rows[row]]:
                seq.timing.cached_prompt_tokens = len(seq.spec.prompt)
            computed.add(rows[row])
            update = self._advance(seq, out)
            update.started, update.identity = True, self.identity
            if seq.spec.prompt_logprobs:
                update.prompt_logprobs = _prompt_logprobs(logits[row], seq.spec.prompt, seq.spec.top_logprobs)
            if update.timing is None:
                update.timing = Timing(**seq.timing.__dict__)
            updates.setdefault(seq.handle, []).append(update)

    def _decode(self, updates: dict[RequestHandle, list[Update]]) -> None:
        now = time.perf_counter()
        for seq in self._rows:
            if seq.timing.first_decode is None:
                seq.timing.first_decode = now
        logits = self.runner.decode([s.completion[-1] for s in self._rows])
        for seq, out in zip(self._rows, self._sample(self._rows, logits), strict=True):
            updates.setdefault(seq.handle, []).append(self._advance(seq, out))

    def _sample(self, seqs: list[_Seq], logits: torch.Tensor) -> list[TokenOut]:
        raw = torch.log_softmax(logits, dim=-1)
        processed = processed_logprobs(logits, [s.spec.sampling for s in seqs])
        tokens = choose_tokens(processed, [s.generator for s in seqs], self._rng)
        tops = top_entries(raw, max(s.spec.top_logprobs for s in seqs))
        index = torch.tensor(tokens).unsqueeze(1)
        raw_picked = raw.gather(1, index).squeeze(1).tolist()
        proc_picked = processed.gather(1, index).squeeze(1).tolist()
        return [
            TokenOut(tok, float(raw_picked[i]), float(proc_picked[i]), tops[i][: seqs[i].spec.top_logprobs])
            for i, tok in enumerate(tokens)
        ]

    def _advance(self, seq: _Seq, out: TokenOut) -> Update:
        seq.completion.append(out.token_id)
        update = Update(index=seq.index, tokens=[out])
        reason = finish_reason(seq.spec, seq.completion, self.runner.max_positions)
        if reason == "stop":  # a stop token: its text is not part of the output
            update.text = seq.tracker.flush()
        else:
            update.text, hit = seq.tracker.push(seq.completion)
            if hit:
                reason = "stop"
            elif reason is not None:
                update.text += seq.tracker.flush()
        if reason is not None:
            seq.done = True
            seq.timing.finished = time.perf_counter()
            update.finish_reason = reason
            update.timing = Timing(**seq.timing.__dict__)
        return update


def _dispatch(updates: dict[RequestHandle, list[Update]]) -> None:
    for handle, items in updates.items():
        if not handle.cancelled:
            handle.queue.put_nowait(items)


def _fail(handles: set[RequestHandle], error: BaseException) -> None:
    for handle in handles:
        handle.queue.put_nowait(error)


def _prompt_logprobs(logits: torch.Tensor, prompt: list[int], top: int) -> list[TokenOut | None]:
    """Echo scoring: row ``logits`` [W, V] is left-padded; position j predicts prompt[j + 1]."""
    length = len(prompt)
    width = logits.shape[0]
    raw = torch.log_softmax(logits[width - length : width - 1], dim=-1)
    targets = torch.tensor(prompt[1:], dtype=torch.long).unsqueeze(1)
    picked = raw.gather(1, targets).squeeze(1).tolist() if length > 1 else []
    tops = top_entries(raw, top) if length > 1 else []
    out: list[TokenOut | None] = [None]
    out += [
        TokenOut(tok, float(lp), None, tops[j])
        for j, (tok, lp) in enumerate(zip(prompt[1:], picked, strict=True))
    ]
    return out

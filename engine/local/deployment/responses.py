"""Building OpenAI-completions-shaped bodies and SSE chunks from scheduler updates.

One ``CompletionBuilder`` per request accumulates every choice's tokens and text, so the streamed
chunks and the non-streamed body are produced from the same state (and therefore agree).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from engine.local.deployment.protocol import CompletionPlan
from engine.local.deployment.state import Timing, TokenOut, Update

PERF_KEYS_UP_FRONT = (
    "prefill-queue-duration",
    "prompt-tokens",
    "cached-prompt-tokens",
    "num-concurrent-requests",
)


@dataclass
class _Choice:
    index: int
    text: str = ""
    tokens: list[TokenOut] = field(default_factory=list)
    finish_reason: str | None = None
    started: bool = False


class CompletionBuilder:
    def __init__(self, plan: CompletionPlan, tokenizer: Any, request_id: str, model: str) -> None:
        self.plan = plan
        self.tok = tokenizer
        self.id = request_id
        self.model = model
        self.created = int(time.time())
        self.choices = [_Choice(i) for i in range(len(plan.specs))]
        self.identity: str | None = None
        self.start_timing: Timing | None = None  # from the first choice to start
        self.end_timing: Timing | None = None  # from the last choice to finish
        self.prompt_logprobs: list[TokenOut | None] | None = None
        self._piece_cache: dict[int, str] = {}
        self._prompt_text: str | None = None

    # ------------------------------------------------------------------ state

    @property
    def done(self) -> bool:
        return all(c.finish_reason is not None for c in self.choices)

    @property
    def prompt_text(self) -> str:
        if self._prompt_text is None:
            self._prompt_text = self.tok.decode(self.plan.prompt_ids, skip_special_tokens=True)
        return self._prompt_text

    def apply(self, update: Update) -> None:
        choice = self.choices[update.index]
        if update.started:
            if self.start_timing is None and update.timing is not None:
                self.start_timing = update.timing
                self.identity = update.identity
            if update.prompt_logprobs is not None and self.prompt_logprobs is None:
                self.prompt_logprobs = update.prompt_logprobs
        choice.tokens.extend(update.tokens)
        choice.text += update.text
        if update.finish_reason is not None:
            choice.finish_reason = update.finish_reason
            self.end_timing = update.timing

    # ---------------------------------------------------------------- pieces

    def _piece(self, token_id: int) -> str:
        if token_id not in self._piece_cache:
            self._piece_cache[token_id] = self.tok.decode([token_id])
        return self._piece_cache[token_id]

    def logprobs(self, entries: list[TokenOut | None], prompt_ids: list[int] | None = None) -> dict[str, Any]:
        """OpenAI completions logprobs plus Fireworks' ``content`` list. ``prompt_ids`` supply the token
        ids of echoed prompt positions that carry no score (the first one)."""
        top_n = self.plan.top_logprobs
        tokens, token_lps, tops, offsets, content = [], [], [], [], []
        offset = 0
        for j, e in enumerate(entries):
            token_id = e.token_id if e is not None else (prompt_ids[j] if prompt_ids else 0)
            piece = self._piece(token_id)
            top = [] if e is None else e.top
            tokens.append(piece)
            token_lps.append(None if e is None else e.logprob)
            tops.append(None if e is None else {self._piece(t): lp for t, lp in top})
            offsets.append(offset)
            offset += len(piece)
            content.append(
                {
                    "token": piece,
                    "token_id": token_id,
                    "logprob": None if e is None else e.logprob,
                    "sampling_logprob": None if e is None else e.sampling_logprob,
                    "top_logprobs": [
                        {"token": self._piece(t), "token_id": t, "logprob": lp} for t, lp in top
                    ],
                }
            )
        return {
            "tokens": tokens,
            "token_logprobs": token_lps,
            "top_logprobs": tops if top_n > 0 else None,
            "text_offset": offsets,
            "content": content,
        }

    def perf_metrics(self) -> dict[str, float | int]:
        t = self.start_timing
        if t is None or t.scheduled is None or t.prefill_done is None:
            return {}
        end = self.end_timing or t
        first_decode = end.first_decode if end.first_decode is not None else t.first_decode
        out: dict[str, float | int] = {
            "prefill-queue-duration": t.scheduled - t.arrival,
            "generation-queue-duration": (first_decode - t.prefill_done) if first_decode else 0.0,
            "server-time-to-first-token": t.prefill_done - t.arrival,
            "prompt-tokens": len(self.plan.prompt_ids),
            "cached-prompt-tokens": t.cached_prompt_tokens,
            "num-concurrent-requests": t.num_concurrent,
            "prefill-duration": t.prefill_done - t.scheduled,
        }
        if end.finished is not None:
            out["server-processing-time"] = end.finished - t.arrival
            out["generation-duration"] = end.finished - t.prefill_done
        return out

    def headers(self, final: bool) -> dict[str, str]:
        perf = self.perf_metrics()
        keys = perf.keys() if final else [k for k in PERF_KEYS_UP_FRONT if k in perf]
        out = {k: _fmt(perf[k]) for k in keys}
        out["x-hotloop-snapshot-identity"] = self.identity or ""
        return out

    def usage(self) -> dict[str, int]:
        completion = sum(len(c.tokens) for c in self.choices)
        prompt = len(self.plan.prompt_ids)
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}

    def _raw_output(self, choice: _Choice) -> dict[str, Any]:
        return {
            "prompt_token_ids": self.plan.prompt_ids,
            "completion_token_ids": [t.token_id for t in choice.tokens],
        }

    def _tail(self, body: dict[str, Any]) -> dict[str, Any]:
        body["snapshot_identity"] = self.identity
        if self.plan.request.usage:
            body["usage"] = self.usage()
        if self.plan.request.perf_metrics_in_response:
            body["perf_metrics"] = self.perf_metrics()
        return body

    def _envelope(self, choices: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "text_completion",
            "created": self.created,
            "model": self.model,
            "choices": choices,
        }

    # ------------------------------------------------------------------ bodies

    def body(self) -> dict[str, Any]:
        """The non-streamed response."""
        req = self.plan.request
        choices = []
        for c in self.choices:
            text = (self.prompt_text if req.echo else "") + c.text
            entries: list[TokenOut | None] = list(c.tokens)
            if req.echo and self.prompt_logprobs is not None:
                entries = [*self.prompt_logprobs, *entries]
            logprobs = None
            if self.plan.want_logprobs:
                logprobs = self.logprobs(entries, self.plan.prompt_ids if req.echo else None)
            choice: dict[str, Any] = {
                "index": c.index,
                "text": text,
                "logprobs": logprobs,
                "finish_reason": c.finish_reason,
            }
            if req.raw_output:
                choice["raw_output"] = self._raw_output(c)
            choices.append(choice)
        return self._tail(self._envelope(choices))

    def chunks(self, updates: list[Update]) -> list[dict[str, Any]]:
        """SSE chunks for one batch of updates; the chunk that completes the request carries the tail."""
        req = self.plan.request
        out = []
        for update in updates:
            self.apply(update)
            c = self.choices[update.index]
            text = update.text
            entries: list[TokenOut | None] = list(update.tokens)
            prompt_ids = None
            if not c.started:
                c.started = True
                if req.echo:
                    text = self.prompt_text + text
                    if self.prompt_logprobs is not None:
                        entries = [*self.prompt_logprobs, *entries]
                        prompt_ids = self.plan.prompt_ids + [t.token_id for t in update.tokens]
            choice: dict[str, Any] = {
                "index": c.index,
                "text": text,
                "logprobs": self.logprobs(entries, prompt_ids) if self.plan.want_logprobs else None,
                "finish_reason": update.finish_reason,
            }
            if update.finish_reason is not None and req.raw_output:
                choice["raw_output"] = self._raw_output(c)
            out.append(self._envelope([choice]))
        if out and self.done:
            self._tail(out[-1])
        return out


def _fmt(value: float | int) -> str:
    return str(value) if isinstance(value, int) else f"{value:.6f}"

"""DeploymentSampler: token-in/token-out sampling through a deployment's completions API.

``n`` samples are ``n`` concurrent ``n=1`` streaming requests, each with its own retry owner (policy
and loop in ``retry.py``) and one stable ``x-request-id`` across its attempts. Every attempt is admitted by
the concurrency controller and releases its slot exactly once, with the attempt's ``ServerMetrics``
(also on error and cancellation). What the request asks for and how the stream is read is the
deployment's *dialect* (engine.sampling.dialect): Fireworks' by default (the seed's API, also spoken by
the embedded deployment), vLLM's from its backend. Either way the defaults ask for the full
distribution (top_p 1, no top-k) so RL rollouts are on-policy, and for token ids, logprobs and the
server's queue-time signal.

``draining()`` (engine.sampling.drain) is the gate around a hot-load on a deployment that does not
name the weights of each completion: admission closes, the attempts in flight finish, the block
runs, a new epoch opens. Each completion carries the epoch its (last) attempt ran in.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import aiohttp

from engine.errors import ConfigError, StuckError
from engine.log import get_logger
from engine.sampling.completion import SampledCompletion
from engine.sampling.controllers import AdaptiveConcurrencyController, ConcurrencyController
from engine.sampling.dialect import RESERVED_FIELDS, CompletionDialect
from engine.sampling.drain import DrainGate
from engine.sampling.errors import (
    AttemptError,
    SamplingExhaustedError,
    SamplingStatusError,
    SamplingTimeoutError,
)
from engine.sampling.metrics import ServerMetrics
from engine.sampling.retry import SamplingRetryPolicy, retry_attempts
from engine.sampling.stream import StreamResult, stream_completion


def _log() -> Any:
    # Looked up per call: a logger bound at import would miss a later ``engine.log.configure``.
    return get_logger("sampling.sampler")


_METRICS_KEPT = 65536


class DeploymentSampler:
    """Async sampler for one deployment; safe to share between tasks (and loops, if no session is given)."""

    def __init__(
        self,
        inference_url: str,
        model: str,
        api_key: str,
        tokenizer: Any = None,
        concurrency_controller: ConcurrencyController | None = None,
        *,
        session: aiohttp.ClientSession | None = None,
        additional_headers: Mapping[str, str] | None = None,
        retry_policy: SamplingRetryPolicy | None = None,
        admission_timeout_s: float = 3600.0,
        dialect: CompletionDialect | None = None,
        completions_path: str | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rng: random.Random | None = None,
        connection_limit: int = 512,
    ) -> None:
        if not inference_url.startswith(("http://", "https://")):
            raise ConfigError(f"inference_url must be an http(s) URL, got {inference_url!r}")
        if not model:
            raise ConfigError("model must name the deployment (accounts/<acct>/deployments/<id>)")
        if admission_timeout_s <= 0:
            raise ConfigError(f"admission_timeout_s must be > 0, got {admission_timeout_s}")
        if dialect is None:
            from engine.backends.fireworks.dialect import FireworksDialect  # the seed API's default

            dialect = FireworksDialect()
        self.dialect = dialect
        self.url = inference_url.rstrip("/") + (completions_path or dialect.completions_path)
        self.model = model
        self._api_key = api_key
        self.tokenizer = tokenizer
        self._controller: ConcurrencyController = concurrency_controller or AdaptiveConcurrencyController()
        self._user_session = session
        self._own_session: aiohttp.ClientSession | None = None
        self._own_loop: asyncio.AbstractEventLoop | None = None
        self._extra_headers = dict(additional_headers or {})
        self._base_headers: dict[str, str] | None = None
        self.retry_policy = retry_policy or SamplingRetryPolicy()
        self._admission_timeout_s = admission_timeout_s
        self._sleep = sleep
        self._rng = rng or random.Random()
        self._connection_limit = connection_limit
        self._metrics: deque[ServerMetrics] = deque(maxlen=_METRICS_KEPT)
        self._warned_logprob_fallback = False
        self._drain = DrainGate()

    def __repr__(self) -> str:  # no api key
        return f"DeploymentSampler(url={self.url!r}, model={self.model!r})"

    @property
    def concurrency_controller(self) -> ConcurrencyController:
        return self._controller

    @concurrency_controller.setter
    def concurrency_controller(self, controller: ConcurrencyController) -> None:
        self._controller = controller

    @property
    def epoch(self) -> int:
        """The current drain epoch (0 until the first ``draining`` block ends)."""
        return self._drain.epoch

    @property
    def attempts_in_flight(self) -> int:
        return self._drain.in_flight

    def draining(self, timeout_s: float) -> contextlib.AbstractAsyncContextManager[int]:
        """``async with sampler.draining(t):`` stop admitting attempts, wait (at most ``t`` s) until
        those in flight finished, run the block, reopen in a new epoch (engine.sampling.drain)."""
        return self._drain.draining(timeout_s)

    async def __aenter__(self) -> DeploymentSampler:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the session this sampler created (a caller's session stays open)."""
        # A session born on another (possibly finished) loop cannot be closed from this one.
        if (
            self._own_session is not None
            and not self._own_session.closed
            and self._own_loop is asyncio.get_running_loop()
        ):
            await self._own_session.close()
        self._own_session = None

    def session(self) -> aiohttp.ClientSession:
        """The HTTP session for the running loop (rebuilt when called from a different loop)."""
        if self._user_session is not None:
            return self._user_session
        loop = asyncio.get_running_loop()
        if self._own_session is None or self._own_session.closed or self._own_loop is not loop:
            connector = aiohttp.TCPConnector(limit=self._connection_limit)
            self._own_session = aiohttp.ClientSession(connector=connector, read_bufsize=1 << 20)
            self._own_loop = loop
        return self._own_session

    def headers(self, request_id: str) -> dict[str, str]:
        """Request headers; caller-supplied ``additional_headers`` override the defaults by name."""
        if self._base_headers is None:
            base = {
                "Authorization": f"Bearer {self._api_key}",
                "X-Api-Key": self._api_key,
                "Content-Type": "application/json",
            }
            lowered = {k.lower() for k in self._extra_headers}
            base = {k: v for k, v in base.items() if k.lower() not in lowered}
            self._base_headers = {**base, **self._extra_headers}
        headers = {"x-request-id": request_id, **self._base_headers}
        return headers

    def build_payload(
        self, prompt_token_ids: Sequence[int], *, max_tokens: int, temperature: float, **kwargs: Any
    ) -> dict[str, Any]:
        """The n=1 streaming completions body in the dialect (kwargs override its defaults)."""
        bad = RESERVED_FIELDS.intersection(kwargs)
        if bad:
            raise ConfigError(f"{sorted(bad)[0]!r} is set by the sampler and cannot be passed as a kwarg")
        if max_tokens < 1:
            raise ConfigError(f"max_tokens must be >= 1, got {max_tokens}")
        if temperature < 0:
            raise ConfigError(f"temperature must be >= 0, got {temperature}")
        return self.dialect.payload(
            self.model, prompt_token_ids, max_tokens=max_tokens, temperature=temperature, extra=kwargs
        )

    async def _admit(self) -> None:
        try_acquire = getattr(self._controller, "try_acquire", None)
        if try_acquire is not None and try_acquire():
            return  # a free slot: no timer needed
        try:
            async with asyncio.timeout(self._admission_timeout_s):
                await self._controller.acquire()
        except TimeoutError as exc:
            raise StuckError(
                f"waited {self._admission_timeout_s:g} s for a sampling slot"
                f" (window={self._controller.window_size}, in_flight={self._controller.in_flight})"
            ) from exc

    async def stream_once(
        self, payload: Mapping[str, Any], *, request_id: str, attempt: int = 1
    ) -> StreamResult:
        """One attempt, admitted by the controller; raises like ``stream_completion``."""
        result, _ = await self._attempt(payload, request_id, attempt)
        return result

    async def _attempt(
        self, payload: Mapping[str, Any], request_id: str, attempt: int
    ) -> tuple[StreamResult, int]:
        """One attempt and the drain epoch it ran in. The controller admits first, then the drain
        gate: a drain waits only for attempts that are really running, not for a queue."""
        await self._admit()
        metrics: ServerMetrics | None = None
        entered = False
        try:
            epoch = await self._drain.enter(self._admission_timeout_s)
            entered = True
            result = await stream_completion(
                self.session(),
                self.url,
                payload,
                self.headers(request_id),
                timeout_s=self.retry_policy.attempt_timeout_s,
                idle_timeout_s=self.retry_policy.idle_timeout_s,
                retry_attempt=attempt,
                accumulator=self.dialect.accumulator(),
            )
            metrics = result.metrics
            return result, epoch
        except AttemptError as exc:
            metrics = exc.metrics
            raise
        finally:
            if entered:
                self._drain.leave()
            self._controller.release(metrics)
            if metrics is not None:
                self._metrics.append(metrics)

    def drain_metrics(self) -> list[ServerMetrics]:
        """Per-attempt metrics recorded since the last drain (bounded)."""
        out = list(self._metrics)
        self._metrics.clear()
        return out

    async def sample_with_tokens(
        self,
        messages: Sequence[Mapping[str, Any]],
        n: int = 1,
        max_tokens: int = 1024,
        temperature: float = 1.0,
        max_seq_len: int | None = None,
        **kwargs: Any,
    ) -> list[SampledCompletion]:
        """Render ``messages`` with the tokenizer's chat template, then sample like prompt tokens."""
        if self.tokenizer is None:
            raise ConfigError("tokenizer is required for sample_with_tokens (pass tokenizer= to the sampler)")
        ids = await asyncio.to_thread(
            self.tokenizer.apply_chat_template,
            list(messages),
            tokenize=True,
            add_generation_prompt=True,
            return_dict=False,
        )
        return await self.sample_with_prompt_tokens(
            list(ids), n=n, max_tokens=max_tokens, temperature=temperature, max_seq_len=max_seq_len, **kwargs
        )

    async def sample_with_prompt_tokens(
        self,
        prompt_token_ids: Sequence[int],
        n: int = 1,
        max_tokens: int = 1024,
        temperature: float = 1.0,
        max_seq_len: int | None = None,
        stop: Sequence[str | int] | None = None,
        **kwargs: Any,
    ) -> list[SampledCompletion]:
        """``n`` concurrent n=1 requests; completions longer than ``max_seq_len`` are dropped."""
        if n < 1:
            raise ConfigError(f"n must be >= 1, got {n}")
        prompt = [int(t) for t in prompt_token_ids]
        if not prompt:
            raise ConfigError("prompt_token_ids must not be empty")
        if max_seq_len is not None and len(prompt) >= max_seq_len:
            return []
        if stop is not None:
            kwargs["stop"] = self._stop_strings(stop)
        payload = self.build_payload(prompt, max_tokens=max_tokens, temperature=temperature, **kwargs)
        if n == 1:  # no fan-out: skip the task machinery
            results = [await self._request(payload, prompt)]
            if max_seq_len is not None:
                results = [r for r in results if len(r.full_tokens) <= max_seq_len]
            return results
        tasks = [asyncio.ensure_future(self._request(payload, prompt)) for _ in range(n)]
        try:
            results = await asyncio.gather(*tasks)
        finally:
            # A failed sibling must not leave the others running (and holding slots).
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        if max_seq_len is not None:
            results = [r for r in results if len(r.full_tokens) <= max_seq_len]
        return list(results)

    def _stop_strings(self, stop: Sequence[str | int]) -> list[str]:
        out: list[str] = []
        for item in stop:
            if isinstance(item, str):
                out.append(item)
            elif self.tokenizer is None:
                raise ConfigError("stop token ids need a tokenizer to decode them (the API takes strings)")
            else:
                out.append(self.tokenizer.decode([int(item)]))
        return out

    async def _request(self, payload: Mapping[str, Any], prompt: list[int]) -> SampledCompletion:
        request_id = os.urandom(16).hex()  # as unique as uuid4().hex, a few microseconds cheaper

        def log_retry(number: int, exc: AttemptError, delay: float) -> None:
            _log().warning(
                "sampling attempt failed; retrying",
                request_id=request_id,
                attempt=number,
                kind=exc.kind,
                status=exc.status,
                error=str(exc)[:300],
                sleep_s=round(delay, 3),
            )

        epoch = 0

        async def attempt(number: int) -> StreamResult:
            nonlocal epoch
            result, epoch = await self._attempt(payload, request_id, number)
            return result

        try:
            result, attempts = await retry_attempts(
                self.retry_policy, attempt, rng=self._rng, sleep=self._sleep, on_retry=log_retry
            )
        except AttemptError as exc:
            if exc.gave_up == "not_found":
                raise SamplingStatusError(404, str(exc), request_id=request_id) from exc
            note = getattr(self._controller, "note_retry_exhausted", None)
            if callable(note):
                note(exc.metrics)
            timeout_like = exc.kind == "timeout" or exc.status in (408, 504)
            cls = SamplingTimeoutError if timeout_like else SamplingExhaustedError
            raise cls(
                request_id=request_id,
                attempts=exc.attempts,
                last_kind=exc.kind,
                last_status=exc.status,
                last_message=str(exc),
                model=self.model,
            ) from exc
        return self._completion(result, prompt, payload, request_id, attempts, epoch)

    def _completion(
        self,
        result: StreamResult,
        prompt: list[int],
        payload: Mapping[str, Any],
        request_id: str,
        attempts: int,
        epoch: int = 0,
    ) -> SampledCompletion:
        prompt_ids = result.prompt_token_ids or prompt
        sampling = result.sampling_logprobs
        full_distribution = (  # top_k 0 (Fireworks) and -1 (vLLM) both mean "no truncation"
            payload.get("temperature") == 1.0
            and payload.get("top_p") == 1.0
            and payload.get("top_k") in (None, 0, -1)
        )
        if result.inference_logprobs and all(x is None for x in sampling) and full_distribution:
            # At temperature 1 with no truncation the behavior policy is the model's distribution.
            if not self._warned_logprob_fallback:
                self._warned_logprob_fallback = True
                _log().info(
                    "server sent no sampling_logprob; using raw logprobs (temperature 1, no truncation)"
                )
            sampling = list(result.inference_logprobs)
        return SampledCompletion(
            text=result.text,
            full_tokens=list(prompt_ids) + result.completion_token_ids,
            prompt_len=len(prompt_ids),
            completion_tokens=result.completion_token_ids,
            finish_reason=result.finish_reason,
            sampling_logprobs=list(sampling),
            inference_logprobs=list(result.inference_logprobs),
            server_metrics=result.metrics,
            snapshot_identity=result.snapshot_identity,
            request_id=request_id,
            attempts=attempts,
            epoch=epoch,
        )

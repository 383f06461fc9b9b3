"""Server-sent events: an incremental line decoder and the completion-stream accumulator.

Pure and synchronous, so the parsing rules are unit tested without a server. The decoder follows the
SSE framing: ``event:``/``data:`` fields, a blank line (or the end of the stream) dispatches, ``:``
lines are comments. Keep-alive events (ping, heartbeat, keepalive) are dropped.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from engine.sampling.errors import AttemptError, SamplingProtocolError

DONE = "[DONE]"
IGNORED_EVENTS = frozenset({"ping", "heartbeat", "keepalive", "keep-alive"})
FINISH_REASONS = frozenset({"stop", "length", "tool_calls"})
_TRANSIENT_UPSTREAM = frozenset({408, 425, 429, 500, 502, 503, 504})


@dataclass(frozen=True, slots=True)
class SSEEvent:
    event: str
    data: str


class SSEDecoder:
    """Feed raw bytes as they arrive; iterate the complete events."""

    def __init__(self) -> None:
        self._buffer = b""
        self._event = ""
        self._data: list[str] = []

    def feed(self, chunk: bytes) -> Iterator[SSEEvent]:
        lines = (self._buffer + chunk).split(b"\n")
        self._buffer = lines.pop()  # the unterminated tail waits for more bytes
        for raw in lines:
            event = self._line(raw.rstrip(b"\r").decode("utf-8", errors="replace"))
            if event is not None:
                yield event

    def close(self) -> Iterator[SSEEvent]:
        """Flush a final unterminated line and event at end of stream."""
        if self._buffer:
            event = self._line(self._buffer.rstrip(b"\r").decode("utf-8", errors="replace"))
            self._buffer = b""
            if event is not None:
                yield event
        event = self._dispatch()
        if event is not None:
            yield event

    def _line(self, line: str) -> SSEEvent | None:
        if not line:
            return self._dispatch()
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "data":
            self._data.append(value)
            return None
        if name == "event":
            self._event = value.strip()
            return None
        return None  # id:, retry: and unknown fields carry nothing we use

    def _dispatch(self) -> SSEEvent | None:
        event, data = self._event or "message", "\n".join(self._data)
        had = bool(self._data) or event == "error"
        self._event, self._data = "", []
        if not had or event in IGNORED_EVENTS:
            return None
        return SSEEvent(event, data)


def _error_message(obj: Any) -> tuple[str, int | None]:
    if isinstance(obj, dict):
        err = obj.get("error", obj)
        if isinstance(err, dict):
            status = err.get("code") if isinstance(err.get("code"), int) else err.get("status")
            return str(err.get("message") or err), status if isinstance(status, int) else None
        return str(err), None
    return str(obj), None


@dataclass
class CompletionAccumulator:
    """Folds the JSON chunks of one n=1 completion stream into its result."""

    text_parts: list[str] = field(default_factory=list)
    entries: list[dict[str, Any]] = field(default_factory=list)
    token_logprobs: list[float | None] = field(default_factory=list)
    raw_chunks: list[list[int]] = field(default_factory=list)
    prompt_token_ids: list[int] | None = None
    finish_reason: str | None = None
    usage: dict[str, Any] | None = None
    perf_metrics: dict[str, Any] | None = None
    snapshot_identity: str | None = None
    response_id: str | None = None
    done: bool = False

    def feed_event(self, event: SSEEvent) -> bool:
        """Apply one event; True if it carried completion content (text or tokens)."""
        if self.done:
            return False  # anything after [DONE] is not part of this completion
        if event.event == "error":
            message, status = _error_message(_loads_or_text(event.data))
            raise upstream_error(message, status)
        if event.data.strip() == DONE:
            self.done = True
            return False
        try:
            chunk = json.loads(event.data)
        except json.JSONDecodeError as exc:
            raise SamplingProtocolError(f"stream chunk is not JSON: {event.data[:200]!r}") from exc
        if not isinstance(chunk, dict):
            raise SamplingProtocolError(f"stream chunk is not a JSON object: {event.data[:200]!r}")
        return self.feed_chunk(chunk)

    def feed_chunk(self, chunk: dict[str, Any]) -> bool:
        if chunk.get("error") is not None:
            message, status = _error_message(chunk)
            raise upstream_error(message, status)
        self.response_id = chunk.get("id") or self.response_id
        for key in ("usage", "perf_metrics"):
            if isinstance(chunk.get(key), dict):
                setattr(self, key, chunk[key])
        if chunk.get("snapshot_identity"):
            self.snapshot_identity = str(chunk["snapshot_identity"])
        content = False
        for choice in chunk.get("choices") or ():
            if choice.get("index", 0) != 0:
                continue
            if choice.get("text"):
                self.text_parts.append(choice["text"])
                content = True
            logprobs = choice.get("logprobs")
            if isinstance(logprobs, dict):
                if logprobs.get("content"):
                    self.entries.extend(logprobs["content"])
                    content = True
                elif logprobs.get("token_logprobs"):
                    self.token_logprobs.extend(logprobs["token_logprobs"])
            raw = choice.get("raw_output")
            if isinstance(raw, dict):
                if raw.get("completion_token_ids") is not None:
                    self.raw_chunks.append([int(t) for t in raw["completion_token_ids"]])
                    content = True
                if raw.get("prompt_token_ids") is not None:
                    self.prompt_token_ids = [int(t) for t in raw["prompt_token_ids"]]
            reason = choice.get("finish_reason")
            if reason:
                if reason in ("abort", "error"):
                    raise upstream_error(f"stream finished with finish_reason={reason!r}", None)
                if reason not in FINISH_REASONS:
                    raise SamplingProtocolError(f"unknown finish_reason {reason!r}")
                self.finish_reason = reason
        return content

    @property
    def text(self) -> str:
        return "".join(self.text_parts)

    def completion_token_ids(self) -> list[int]:
        """Token ids: raw_output (delta or cumulative chunks), else logprobs.content token ids."""
        from_logprobs = [int(e["token_id"]) for e in self.entries if e.get("token_id") is not None]
        if self.raw_chunks:
            joined = [t for part in self.raw_chunks for t in part]
            if len(self.raw_chunks) > 1 and joined != from_logprobs == self.raw_chunks[-1]:
                return self.raw_chunks[-1]  # the server repeated the whole list in each chunk
            return joined
        if from_logprobs and len(from_logprobs) == len(self.entries):
            return from_logprobs
        raise SamplingProtocolError(
            "completion stream carried no token ids (need choices[].raw_output.completion_token_ids"
            " or logprobs.content[].token_id; send raw_output: true)"
        )

    def inference_logprobs(self) -> list[float | None]:
        if self.entries:
            return [_opt_float(e.get("logprob")) for e in self.entries]
        return [_opt_float(v) for v in self.token_logprobs]

    def sampling_logprobs(self) -> list[float | None]:
        return [_opt_float(e.get("sampling_logprob")) for e in self.entries]


def _opt_float(value: Any) -> float | None:
    return None if value is None else float(value)


def _loads_or_text(data: str) -> Any:
    try:
        return json.loads(data)
    except json.JSONDecodeError:
        return data


def upstream_error(message: str, status: int | None) -> Exception:
    """An error reported inside the stream: retryable when its status is transient or unknown."""
    if status is None or status in _TRANSIENT_UPSTREAM:
        from engine.sampling.metrics import ServerMetrics

        metrics = ServerMetrics(http_status_code=status) if status is not None else None
        return AttemptError(
            f"upstream stream error: {message}", kind="upstream_stream", status=status, metrics=metrics
        )
    return SamplingProtocolError(f"upstream stream error (status {status}): {message}")

"""Server-sent events: an incremental line decoder and the completion-stream accumulator.

Pure and synchronous, so the parsing rules are unit tested without a server. The decoder follows the
SSE framing: ``event:``/``data:`` fields, a blank line (or the end of the stream) dispatches, ``:``
lines are comments; CRLF line ends are accepted (a lone CR as line end is not). Keep-alive events
(ping, heartbeat, keepalive) are dropped.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, NamedTuple

from engine.retry import error_message, is_transient
from engine.sampling.errors import AttemptError, SamplingProtocolError

try:  # orjson comes with tinker (a hotloop dependency) and decodes chunks ~3x faster
    import orjson

    loads: Callable[[str | bytes], Any] = orjson.loads
    dumps: Callable[[Any], bytes] = orjson.dumps
except ImportError:  # pragma: no cover
    loads = json.loads

    def dumps(obj: Any) -> bytes:
        return json.dumps(obj).encode()


DONE = "[DONE]"
IGNORED_EVENTS = frozenset({"ping", "heartbeat", "keepalive", "keep-alive"})
FINISH_REASONS = frozenset({"stop", "length", "tool_calls"})


class SSEEvent(NamedTuple):
    event: str
    data: str


class SSEDecoder:
    """Feed raw bytes as they arrive; get back the events they complete."""

    def __init__(self) -> None:
        self._buffer = b""

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        # Hot path (every chunk of every stream): split on blank lines, so each piece is one whole
        # event, and take the common single ``data:`` line event without per-line parsing.
        buf = self._buffer + chunk if self._buffer else chunk
        if b"\r" in buf:
            buf = buf.replace(b"\r\n", b"\n")
        blocks = buf.split(b"\n\n")
        self._buffer = blocks.pop()  # an incomplete event waits for more bytes
        out: list[SSEEvent] = []
        for block in blocks:
            if block.startswith(b"data: ") and b"\n" not in block:
                out.append(SSEEvent("message", block[6:].decode("utf-8", errors="replace")))
            elif block:
                self.parse_block(block, out)
        return out

    def close(self) -> list[SSEEvent]:
        """End of stream: dispatch a last event that had no blank line after it."""
        rest, self._buffer = self._buffer.strip(b"\n"), b""
        return self.feed(rest + b"\n\n") if rest else []

    @staticmethod
    def parse_block(block: bytes, out: list[SSEEvent]) -> None:
        """The general field-by-field parse of one event (its lines, without the blank separator)."""
        event, data = "message", []
        for line in block.split(b"\n"):
            if line.startswith(b"data:"):
                value = line[5:]
                data.append(value[1:] if value.startswith(b" ") else value)
            elif line.startswith(b"event:"):
                event = line[6:].strip().decode("utf-8", errors="replace") or "message"
            # ":" comments, id:, retry: and unknown fields carry nothing we use
        if (data or event == "error") and event not in IGNORED_EVENTS:
            out.append(SSEEvent(event, b"\n".join(data).decode("utf-8", errors="replace")))


def _error_message(obj: Any) -> tuple[str, int | None]:
    """(message, status) of an in-stream error event or chunk."""
    err = obj.get("error", obj) if isinstance(obj, dict) else obj
    status = None
    if isinstance(err, dict):
        code = err.get("code") if isinstance(err.get("code"), int) else err.get("status")
        status = code if isinstance(code, int) else None
    return error_message(obj, str(obj)), status


@dataclass
class CompletionAccumulator:
    """Folds the JSON chunks of one n=1 completion stream into its result.

    This class reads what every OpenAI-style completions stream has (text, logprobs, finish reason,
    usage, in-stream errors). A backend's dialect subclasses it to read its own fields -- token ids,
    server metrics, the identity that generated the completion -- in ``feed_dialect_chunk`` and
    ``feed_dialect_choice`` (engine.backends.fireworks.dialect, engine.backends.vllm.dialect).
    ``raw_chunks`` (token ids per chunk), ``prompt_token_ids``, ``perf_metrics`` (keys as in
    engine.sampling.metrics, e.g. ``prefill-queue-duration`` in seconds) and ``snapshot_identity`` are
    what those hooks fill in.
    """

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
    _buffer: bytes = b""
    token_ids_field: ClassVar[str] = "a token-id field"
    """Where this dialect's stream carries token ids, for error messages."""

    def feed_bytes(self, chunk: bytes) -> int:
        """Frame SSE events from raw stream bytes and fold them in; returns how many carried content.

        The fused hot path of ``stream_completion``: a plain single-line ``data:`` event is decoded
        straight from bytes, anything else goes through ``SSEDecoder``'s general parse, so framing is
        the same as ``SSEDecoder.feed`` + ``feed_event`` at about half the cost per event.
        """
        if self.done:
            return 0
        buf = self._buffer + chunk if self._buffer else chunk
        if b"\r" in buf:
            buf = buf.replace(b"\r\n", b"\n")
        blocks = buf.split(b"\n\n")
        self._buffer = blocks.pop()
        content = 0
        for block in blocks:
            if block.startswith(b"data: ") and b"\n" not in block:
                data = block[6:]
                if len(data) < 16 and data.strip() == b"[DONE]":
                    self.done = True
                    return content
                try:
                    obj = loads(data)
                except ValueError as exc:
                    raise SamplingProtocolError(f"stream chunk is not JSON: {data[:200]!r}") from exc
                if type(obj) is not dict:
                    raise SamplingProtocolError(f"stream chunk is not a JSON object: {data[:200]!r}")
                content += self.feed_chunk(obj)
            elif block:
                events: list[SSEEvent] = []
                SSEDecoder.parse_block(block, events)
                for event in events:
                    content += self.feed_event(event)
                    if self.done:
                        return content
        return content

    def finish_bytes(self) -> int:
        """End of stream: fold in a last event that had no blank line after it."""
        rest, self._buffer = self._buffer.strip(b"\n"), b""
        return self.feed_bytes(rest + b"\n\n") if rest else 0

    def feed_event(self, event: SSEEvent) -> bool:
        """Apply one event; True if it carried completion content (text or tokens)."""
        if self.done:
            return False  # anything after [DONE] is not part of this completion
        name, data = event
        if name == "error":
            message, status = _error_message(_loads_or_text(data))
            raise upstream_error(message, status)
        if len(data) < 16 and data.strip() == DONE:
            self.done = True
            return False
        try:
            chunk = loads(data)
        except ValueError as exc:  # json's and orjson's decode errors are ValueErrors
            raise SamplingProtocolError(f"stream chunk is not JSON: {data[:200]!r}") from exc
        if not isinstance(chunk, dict):
            raise SamplingProtocolError(f"stream chunk is not a JSON object: {data[:200]!r}")
        return self.feed_chunk(chunk)

    def feed_chunk(self, chunk: dict[str, Any]) -> bool:
        if chunk.get("error") is not None:
            message, status = _error_message(chunk)
            raise upstream_error(message, status)
        response_id = chunk.get("id")
        if response_id:
            self.response_id = response_id
        # The tail fields ride on the final chunk only: membership tests keep token chunks cheap.
        if "usage" in chunk and isinstance(chunk["usage"], dict):
            self.usage = chunk["usage"]
        content = self.feed_dialect_chunk(chunk)
        for choice in chunk.get("choices") or ():
            if choice.get("index", 0) != 0:
                continue
            text = choice.get("text")
            if text:
                self.text_parts.append(text)
                content = True
            logprobs = choice.get("logprobs")
            if logprobs:
                entries = logprobs.get("content")
                if entries:
                    self.entries.extend(entries)
                    content = True
                elif logprobs.get("token_logprobs"):
                    self.token_logprobs.extend(logprobs["token_logprobs"])
            if self.feed_dialect_choice(choice):
                content = True
            reason = choice.get("finish_reason")
            if reason:
                if reason in ("abort", "error"):
                    raise upstream_error(f"stream finished with finish_reason={reason!r}", None)
                if reason not in FINISH_REASONS:
                    raise SamplingProtocolError(f"unknown finish_reason {reason!r}")
                self.finish_reason = reason
        return content

    # ---- dialect hooks: a backend's accumulator reads its own fields here -------------------------

    def feed_dialect_chunk(self, chunk: dict[str, Any]) -> bool:
        """Chunk-level fields of a dialect (server metrics, identity); True if they carried content."""
        return False

    def feed_dialect_choice(self, choice: dict[str, Any]) -> bool:
        """Choice-level fields of a dialect (token ids); True if they carried content."""
        return False

    @property
    def text(self) -> str:
        return "".join(self.text_parts)

    def completion_token_ids(self) -> list[int]:
        """Token ids: the dialect's token-id chunks (delta or cumulative), else logprobs.content ids."""
        from_logprobs = [int(e["token_id"]) for e in self.entries if e.get("token_id") is not None]
        if self.raw_chunks:
            joined = [t for part in self.raw_chunks for t in part]
            if len(self.raw_chunks) > 1 and joined != from_logprobs == self.raw_chunks[-1]:
                return self.raw_chunks[-1]  # the server repeated the whole list in each chunk
            return joined
        if from_logprobs and len(from_logprobs) == len(self.entries):
            return from_logprobs
        raise SamplingProtocolError(
            f"completion stream carried no token ids (need {self.token_ids_field} or"
            " logprobs.content[].token_id)"
        )

    def inference_logprobs(self) -> list[float | None]:
        if self.entries:
            return [None if (v := e.get("logprob")) is None else float(v) for e in self.entries]
        return [None if v is None else float(v) for v in self.token_logprobs]

    def sampling_logprobs(self) -> list[float | None]:
        return [None if (v := e.get("sampling_logprob")) is None else float(v) for e in self.entries]


def _loads_or_text(data: str) -> Any:
    try:
        return loads(data)
    except ValueError:
        return data


def upstream_error(message: str, status: int | None) -> Exception:
    """An error reported inside the stream: retryable when its status is transient or unknown."""
    if status is None or is_transient(status):
        from engine.sampling.metrics import ServerMetrics

        metrics = ServerMetrics(http_status_code=status) if status is not None else None
        return AttemptError(
            f"upstream stream error: {message}", kind="upstream_stream", status=status, metrics=metrics
        )
    return SamplingProtocolError(f"upstream stream error (status {status}): {message}")

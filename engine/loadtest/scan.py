"""A fast scan of a completions SSE stream for the load generator's hot path.

Decoding every chunk fully (SSE framing, JSON, accumulation) costs more CPU per request than the
whole bare HTTP exchange, which would make the client, not the server, the bottleneck of a load
test. Plain content deltas (``data: {... "text": "<non-empty>" ...}`` with no finish reason, error,
usage, metrics, token ids or logprobs) are only timed and counted, by two byte-level regex checks.
Every other event goes through engine.sampling's CompletionAccumulator unchanged (final chunk,
errors, [DONE]); anything outside plain ``data:`` lines (``event:``, ``id:``, ``retry:``) hands the
rest of the stream to engine.sampling's SSEDecoder. Assumes one JSON object per ``data:`` line, as
vLLM, SGLang, Fireworks and the embedded deployment send.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from engine.sampling.sse import CompletionAccumulator, SSEDecoder, SSEEvent

_CONTENT = re.compile(rb'"text"\s*:\s*"(?!")')
_NEEDS_PARSE = re.compile(
    rb'"finish_reason"\s*:\s*"|"error"|"usage"\s*:\s*\{|"perf_metrics"|"raw_output"\s*:\s*\{'
    rb'|"logprobs"\s*:\s*\{|"snapshot_identity"\s*:\s*"|"choices"\s*:\s*\[\s*\]'
)


class StreamScanner:
    """Feed raw bytes; each call returns how many content events they completed."""

    def __init__(self, accumulator: CompletionAccumulator | None = None) -> None:
        self.acc = accumulator if accumulator is not None else CompletionAccumulator()
        self._decoder: SSEDecoder | None = None
        self._buf = b""

    @property
    def done(self) -> bool:
        return self.acc.done

    def feed(self, data: bytes) -> int:
        if self._decoder is not None:
            return self._full(self._decoder.feed(data))
        lines = (self._buf + data if self._buf else data).split(b"\n")
        self._buf = lines.pop()  # the unterminated tail waits for more bytes
        n = 0
        for i, line in enumerate(lines):
            if line.startswith(b"data:"):
                payload = line[5:].strip()
                if _NEEDS_PARSE.search(payload) is None and payload != b"[DONE]":
                    if _CONTENT.search(payload) is not None:
                        n += 1
                    continue
                if self.acc.feed_event(SSEEvent("message", payload.decode("utf-8", "replace"))):
                    n += 1
                if self.acc.done:
                    return n
            elif not line.strip(b"\r") or line.startswith(b":"):
                continue  # event separator or comment
            else:  # a named event or another field: the full decoder takes the rest of the stream
                self._decoder = SSEDecoder()
                rest = b"\n".join(lines[i:]) + b"\n" + self._buf
                self._buf = b""
                return n + self._full(self._decoder.feed(rest))
        return n

    def close(self) -> int:
        """End of stream: flush what is left."""
        if self._decoder is not None:
            return self._full(self._decoder.close())
        if self._buf:
            return self.feed(b"\n")
        return 0

    def _full(self, events: Iterable[SSEEvent]) -> int:
        n = 0
        for event in events:
            if self.acc.done:
                break
            if self.acc.feed_event(event):
                n += 1
        return n

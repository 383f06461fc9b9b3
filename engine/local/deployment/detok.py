"""Incremental detokenization with stop strings, per sequence.

Text is re-decoded from the completion's token ids (byte-level BPE pieces only make sense in
context). Two things are held back from the stream until they resolve: a trailing U+FFFD (an
incomplete UTF-8 sequence that the next token may finish) and a tail that could still grow into a
stop string, so a client never sees text that is later cut off.
"""

from __future__ import annotations

from typing import Any

REPLACEMENT = "\ufffd"


class TextTracker:
    def __init__(self, tokenizer: Any, stop_strings: tuple[str, ...]) -> None:
        self._tok = tokenizer
        self._stops = tuple(s for s in stop_strings if s)
        self._hold = max((len(s) for s in self._stops), default=1) - 1
        self.emitted = ""  # text already handed out
        self._text = ""  # current full decode (not yet cut at a stop string)

    def push(self, completion_ids: list[int]) -> tuple[str, bool]:
        """Feed all completion ids so far; returns (new text safe to emit, stop string hit)."""
        self._text = self._tok.decode(completion_ids, skip_special_tokens=True)
        if self._stops:
            search_from = max(0, len(self.emitted) - self._hold)
            hits = [i for i in (self._text.find(s, search_from) for s in self._stops) if i >= 0]
            if hits:
                return self._advance(self._text[: min(hits)]), True
        safe = len(self._text) - self._hold
        while safe > len(self.emitted) and self._text[safe - 1] == REPLACEMENT:
            safe -= 1
        return self._advance(self._text[: max(safe, len(self.emitted))]), False

    def flush(self) -> str:
        """At the end of a sequence that did not stop on a string: everything not yet emitted."""
        return self._advance(self._text)

    def _advance(self, upto: str) -> str:
        delta = upto[len(self.emitted) :]
        self.emitted = upto if len(upto) > len(self.emitted) else self.emitted
        return delta

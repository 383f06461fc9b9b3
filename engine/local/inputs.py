"""Pure validation of untrusted request bytes, shared by the three embedded servers.

Every function here takes bytes or decoded JSON and either returns a value whose size is bounded or
raises :class:`BadInput` naming the field at fault; each server renders that as its own 4xx shape.
Nothing here trusts what the input says about itself: a compressed frame's declared size, a JSON
document's nesting, an integer's digit count.
"""

from __future__ import annotations

import io
import json
import math
import zlib
from collections.abc import Callable
from typing import Any

import zstandard

from engine.log import clip

# Deeper than any request of the three APIs; deep enough documents exhaust the parser's recursion.
MAX_JSON_DEPTH = 64
# Digits of an integer literal: int64 and uint64 need 20; beyond a few dozen it is an attack on int().
MAX_INT_DIGITS = 40
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
_CHUNK = 1 << 16


class BadInput(Exception):
    """A request the server refuses: ``status`` (4xx), the ``field`` at fault and why."""

    def __init__(self, status: int, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.status = status
        self.field = field
        self.message = message


# ------------------------------------------------------------------------------------------ JSON


def _reject_constant(name: str) -> Any:
    raise BadInput(400, "body", f"{name} is not valid JSON (numbers must be finite)")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise BadInput(400, "body", f"number {clip(text, 40)} is out of range (numbers must be finite)")
    return value


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise BadInput(400, "body", f"integer literal of {len(text)} digits is out of range")
    return int(text)


def _path(parts: list[str | int]) -> str:
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else p)
    return out or "body"


def _check_str(text: str, where: list[str | int]) -> None:
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise BadInput(400, _path(where), "contains a lone surrogate (not valid Unicode)") from exc


def check_json_value(value: Any, max_depth: int = MAX_JSON_DEPTH) -> None:
    """Nesting depth and string validity of decoded JSON; iterative, so depth cannot recurse."""
    stack: list[tuple[Any, list[str | int]]] = [(value, [])]
    while stack:
        item, where = stack.pop()
        if len(where) > max_depth:
            raise BadInput(400, _path(where[:3]), f"JSON nested deeper than {max_depth} levels")
        if isinstance(item, str):
            _check_str(item, where)
        elif isinstance(item, dict):
            for k, v in item.items():
                _check_str(k, where)
                stack.append((v, [*where, k]))
        elif isinstance(item, list):
            stack.extend((v, [*where, i]) for i, v in enumerate(item))


def parse_json(raw: bytes | str, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """Strict JSON: no NaN/Infinity, no out-of-range numbers, bounded depth, valid Unicode strings."""
    try:
        value = json.loads(
            raw, parse_constant=_reject_constant, parse_float=_finite_float, parse_int=_bounded_int
        )
    except BadInput:
        raise
    except RecursionError as exc:
        raise BadInput(400, "body", f"JSON nested deeper than {max_depth} levels") from exc
    except (ValueError, UnicodeDecodeError) as exc:  # JSONDecodeError is a ValueError
        raise BadInput(400, "body", f"not valid JSON ({clip(str(exc), 160)})") from exc
    check_json_value(value, max_depth)
    return value


def parse_json_object(raw: bytes | str, max_depth: int = MAX_JSON_DEPTH) -> dict[str, Any]:
    value = parse_json(raw or b"{}", max_depth)
    if not isinstance(value, dict):
        raise BadInput(400, "body", f"must be a JSON object, got {type(value).__name__}")
    return value


# ------------------------------------------------------------------------------ decompression


def _too_big(limit: int, encoding: str) -> BadInput:
    return BadInput(413, "body", f"decompressed {encoding} body exceeds the limit of {limit} bytes")


def _zstd(raw: bytes, limit: int) -> bytes:
    # A stream reader ignores the frame header's content size (the one-shot API allocates whatever
    # the header declares) and returns at most what is asked for: a few input bytes of RLE blocks
    # can stand for gigabytes, so the output, not the input, is what is metered.
    out = bytearray()
    window = 1 << max(10, min(27, limit.bit_length()))  # no larger than a body under the limit needs
    dctx = zstandard.ZstdDecompressor(max_window_size=window)
    try:
        with dctx.stream_reader(io.BytesIO(raw), read_across_frames=True) as reader:
            while chunk := reader.read(min(_CHUNK * 16, limit + 1 - len(out))):
                out += chunk
                if len(out) > limit:
                    raise _too_big(limit, "zstd")
    except zstandard.ZstdError as exc:
        raise BadInput(400, "body", f"zstd body could not be decompressed: {exc}") from exc
    return bytes(out)


def _zlib(raw: bytes, limit: int, wbits: int, encoding: str) -> bytes:
    out = bytearray()
    data = raw
    try:
        while data:  # gzip bodies may hold several members back to back
            obj = zlib.decompressobj(wbits)
            while data:
                out += obj.decompress(data, limit + 1 - len(out))
                if len(out) > limit:
                    raise _too_big(limit, encoding)
                data = obj.unconsumed_tail
            if not obj.eof:
                raise BadInput(400, "body", f"{encoding} body is truncated")
            data = obj.unused_data
            if wbits != 31:
                break
    except zlib.error as exc:
        raise BadInput(400, "body", f"{encoding} body could not be decompressed: {exc}") from exc
    return bytes(out)


DECODERS: dict[str, Callable[[bytes, int], bytes]] = {
    "identity": lambda raw, _limit: raw,
    "gzip": lambda raw, limit: _zlib(raw, limit, 31, "gzip"),
    "x-gzip": lambda raw, limit: _zlib(raw, limit, 31, "gzip"),
    "deflate": lambda raw, limit: _zlib(raw, limit, 15, "deflate"),
    "zstd": _zstd,
}


def decompress(raw: bytes, encoding: str, limit: int) -> bytes:
    """Decode a Content-Encoding; the output never exceeds ``limit`` bytes (413 beyond)."""
    decoder = DECODERS.get(encoding.strip().lower() or "identity")
    if decoder is None:
        raise BadInput(
            415, "Content-Encoding", f"{clip(encoding, 40)} is not supported (use {', '.join(DECODERS)})"
        )
    return decoder(raw, limit)


# ------------------------------------------------------------------------------------ integers


def ascii_int(value: Any, field: str, lo: int = INT64_MIN, hi: int = INT64_MAX) -> int:
    """An integer, or a string of ASCII digits (proto3 JSON sends int64 as strings), in [lo, hi]."""
    if isinstance(value, str):
        text = value.strip()
        digits = text.removeprefix("-")
        if not (digits.isascii() and digits.isdigit()) or len(digits) > MAX_INT_DIGITS:
            raise BadInput(400, field, f"must be an integer in [{lo}, {hi}], got {clip(value, 60)}")
        value = int(text)
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise BadInput(400, field, f"must be an integer in [{lo}, {hi}], got {clip(value, 60)}")
    return value

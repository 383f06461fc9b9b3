"""The model runner: batched prefill and decode over one left-padded KV cache.

All methods run on the scheduler's single worker thread (never on the event loop). The batch is a
transformers ``DynamicCache`` of shape [rows, kv_heads, T, head_dim] per layer, left-padded: row i
holds its real tokens in the last ``T - pad[i]`` slots. A decode step feeds each row's last sampled
token with an attention mask hiding the padding and per-row position ids (its real length), so a
row's logits do not depend on who else is in the batch (up to fp32 summation order, ~1e-6).

Rows join after a (left-padded, batched) prefill of their prompts: the two caches are padded to a
common length and concatenated. Each prompt's K/V is also kept in a small LRU ``PromptCache``
(exact token match, cleared on every weight swap), so a prompt seen again, as RL fan-out sends
it n times, skips its prefill. Rows leave by index selection, after which padding that every
remaining row shares is trimmed. Both are whole-cache copies, cheap next to a forward at these sizes.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformers import DynamicCache

PAD_ID_FALLBACK = 0


def sequence_logprobs(model: Any, tokens: Sequence[int], start: int = 1) -> list[float]:
    """Reference logprobs: one plain full-sequence fp32 forward of ``tokens``.

    Returns ``log p(tokens[j] | tokens[:j])`` for ``j`` in ``[start, len(tokens))``. With ``start =
    len(prompt)`` and ``tokens = prompt + completion_token_ids`` these are exactly what the deployment
    reports as ``choices[].logprobs.content[].logprob`` for that completion (same snapshot). This is the
    function a trainer-vs-deployment comparison should use on the deployment side.
    """
    if len(tokens) < 2 or start < 1:
        raise ValueError("need at least two tokens and start >= 1")
    ids = torch.tensor([list(tokens)], dtype=torch.long)
    with torch.inference_mode():
        logits = model(input_ids=ids).logits[0].float()
    logp = torch.log_softmax(logits[:-1], dim=-1)
    targets = ids[0, 1:]
    picked = logp.gather(1, targets.unsqueeze(1)).squeeze(1)
    return [float(x) for x in picked[start - 1 :].tolist()]


class BatchRunner:
    """Owns the model and the running batch's KV cache. Not thread-safe by design: one thread."""

    def __init__(self, model: Any, pad_token_id: int | None = None, prompt_cache_tokens: int = 8192) -> None:
        self.model = model  # a transformers causal LM (Any: its config is not typed)
        cfg = model.config
        self.vocab_size = int(cfg.vocab_size)
        self.max_positions = int(cfg.max_position_embeddings)
        self.pad_id = int(pad_token_id if pad_token_id is not None else (cfg.pad_token_id or PAD_ID_FALLBACK))
        self._cache: DynamicCache | None = None
        self._pad: list[int] = []  # left padding per row
        self._len = 0  # T, cache length incl. padding
        self._prompts = PromptCache(prompt_cache_tokens)
        self.last_hits: list[bool] = []

    @property
    def rows(self) -> int:
        return len(self._pad)

    # ---------------------------------------------------------------- weights

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v.detach() for k, v in self.model.state_dict().items()}

    def check_compatible(self, state: Mapping[str, torch.Tensor]) -> None:
        """Raise ValueError if ``state`` cannot be loaded into the model (names or shapes)."""
        own = self.model.state_dict()
        missing = sorted(set(own) - set(state))
        extra = sorted(set(state) - set(own))
        if missing or extra:
            raise ValueError(
                f"snapshot tensors do not match the model: missing {missing[:3]}, extra {extra[:3]}"
            )
        for k, v in own.items():
            if tuple(state[k].shape) != tuple(v.shape):
                raise ValueError(
                    f"snapshot tensor {k!r} has shape {tuple(state[k].shape)}, model {tuple(v.shape)}"
                )

    def load_weights(self, state: Mapping[str, torch.Tensor]) -> None:
        """Swap weights in place. Only called with an empty batch; all cached K/V is dropped."""
        self.reset()
        self._prompts.clear()
        with torch.no_grad():
            self.model.load_state_dict(dict(state), strict=True)

    def reset(self) -> None:
        self._cache, self._pad, self._len = None, [], 0

    # ---------------------------------------------------------------- compute

    def prefill(
        self, prompts: list[list[int]], full_logits: bool, rows: list[int] | None = None
    ) -> torch.Tensor:
        """Prefill ``prompts`` and append them to the batch as new rows.

        ``rows`` maps each new row to the prompt it uses (default: one row per prompt, in order), so
        identical prompts admitted together are computed once (GRPO-style fan-out sends the same
        prompt n times). Prompts found in the prompt cache are not computed at all;
        ``self.last_hits[j]`` says whether prompt j was. Returns fp32 logits per new row: [rows, V]
        at the last prompt position, or with ``full_logits`` (which bypasses the cache) [rows, L, V]
        left-padded to the longest prompt L (a row's real positions are the last len(prompt) ones).
        """
        rows = list(range(len(prompts))) if rows is None else rows
        entries: list[PromptEntry | None] = [None] * len(prompts)
        for j, p in enumerate(prompts):
            if not full_logits:
                entries[j] = self._prompts.get(tuple(p))
        self.last_hits = [e is not None for e in entries]
        misses = [j for j, e in enumerate(entries) if e is None]
        if misses:
            for j, entry in zip(
                misses, self._compute([prompts[j] for j in misses], full_logits), strict=True
            ):
                entries[j] = entry
                self._prompts.put(tuple(prompts[j]), entry)
        chosen = [e for e in entries if e is not None]
        assert len(chosen) == len(prompts)
        width = max(chosen[j].length for j in rows)
        kvs = [
            (
                torch.cat([_left_pad(chosen[j].kv[layer][0], width - chosen[j].length) for j in rows], 0),
                torch.cat([_left_pad(chosen[j].kv[layer][1], width - chosen[j].length) for j in rows], 0),
            )
            for layer in range(len(chosen[0].kv))
        ]
        self._join(kvs, [width - chosen[j].length for j in rows], width)
        if full_logits:
            fulls = [chosen[j].full for j in rows]
            return torch.stack([_left_pad_rows(f, width) for f in fulls if f is not None])
        return torch.stack([chosen[j].last for j in rows])

    def _compute(self, prompts: list[list[int]], full_logits: bool) -> list[PromptEntry]:
        """One left-padded forward over ``prompts``; each row's K/V sliced out unpadded."""
        n, width = len(prompts), max(len(p) for p in prompts)
        ids = torch.full((n, width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((n, width), dtype=torch.long)
        for i, p in enumerate(prompts):
            ids[i, width - len(p) :] = torch.tensor(p, dtype=torch.long)
            mask[i, width - len(p) :] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        cache = DynamicCache(config=self.model.config)
        with torch.inference_mode():
            out = self.model(
                input_ids=ids,
                attention_mask=mask,
                position_ids=positions,
                cache=cache,
                use_cache=True,
                logits_to_keep=0 if full_logits else 1,
            )
        logits = out.logits.float()
        layers: list[Any] = list(cache.layers)
        entries = []
        for i, p in enumerate(prompts):
            pad = width - len(p)
            kv = [
                (layer.keys[i : i + 1, :, pad:].clone(), layer.values[i : i + 1, :, pad:].clone())
                for layer in layers
            ]
            full = logits[i, pad:] if full_logits else None
            entries.append(PromptEntry(kv=kv, last=logits[i, -1], length=len(p), full=full))
        return entries

    def decode(self, last_tokens: list[int]) -> torch.Tensor:
        """One step for every row: feed its last sampled token; returns [rows, V] fp32 logits."""
        assert self._cache is not None and len(last_tokens) == self.rows
        pad = torch.tensor(self._pad).unsqueeze(1)
        mask = (torch.arange(self._len + 1).unsqueeze(0) >= pad).long()
        ids = torch.tensor(last_tokens, dtype=torch.long).unsqueeze(1)
        positions = self._len - pad  # each row's real length = the new token's position
        with torch.inference_mode():
            out = self.model(
                input_ids=ids,
                attention_mask=mask,
                position_ids=positions,
                cache=self._cache,
                use_cache=True,
                logits_to_keep=1,
            )
        self._len += 1
        return out.logits[:, -1].float()

    def keep_rows(self, keep: list[int]) -> None:
        """Drop every row not in ``keep`` (sorted indices), then trim shared left padding."""
        if len(keep) == self.rows:
            return
        if not keep:
            self.reset()
            return
        assert self._cache is not None
        index = torch.tensor(keep, dtype=torch.long)
        self._pad = [self._pad[i] for i in keep]
        trim = min(self._pad)
        layers: list[Any] = list(self._cache.layers)
        for layer in layers:
            layer.keys = layer.keys.index_select(0, index)[:, :, trim:]
            layer.values = layer.values.index_select(0, index)[:, :, trim:]
        self._pad = [p - trim for p in self._pad]
        self._len -= trim

    def _join(self, kvs: list[tuple[torch.Tensor, torch.Tensor]], pads: list[int], width: int) -> None:
        if self._cache is None:
            cache = DynamicCache(config=self.model.config)
            layers: list[Any] = list(cache.layers)
            for layer, (k, v) in zip(layers, kvs, strict=True):
                layer.lazy_initialization(k, v)
                layer.keys, layer.values = k, v
            self._cache, self._pad, self._len = cache, pads, width
            return
        grow_old, grow_new = max(0, width - self._len), max(0, self._len - width)
        olds: list[Any] = list(self._cache.layers)
        for old, (k, v) in zip(olds, kvs, strict=True):
            old.keys = torch.cat([_left_pad(old.keys, grow_old), _left_pad(k, grow_new)], 0)
            old.values = torch.cat([_left_pad(old.values, grow_old), _left_pad(v, grow_new)], 0)
        self._pad = [p + grow_old for p in self._pad] + [p + grow_new for p in pads]
        self._len = max(self._len, width)


def _left_pad(t: torch.Tensor, n: int) -> torch.Tensor:
    if n == 0:
        return t
    b, h, _, d = t.shape
    return torch.cat([t.new_zeros((b, h, n, d)), t], dim=2)


def _left_pad_rows(t: torch.Tensor, width: int) -> torch.Tensor:
    """[L, V] -> [width, V], zero rows in front."""
    return torch.cat([t.new_zeros((width - t.shape[0], t.shape[1])), t], 0) if t.shape[0] < width else t


@dataclass
class PromptEntry:
    """One prompt's prefill: per-layer (K, V) of shape [1, kv_heads, length, head_dim], unpadded."""

    kv: list[tuple[torch.Tensor, torch.Tensor]]
    last: torch.Tensor  # [V] logits at the last prompt position
    length: int
    full: torch.Tensor | None = None  # [length, V] when all positions were asked for


class PromptCache:
    """LRU of prompt prefills keyed by the exact token tuple, bounded in total prompt tokens.

    It holds K/V computed with the current weights, so a weight swap must clear it."""

    def __init__(self, max_tokens: int) -> None:
        self.max_tokens = max_tokens
        self._items: OrderedDict[tuple[int, ...], PromptEntry] = OrderedDict()
        self._tokens = 0

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: tuple[int, ...]) -> PromptEntry | None:
        entry = self._items.get(key)
        if entry is not None:
            self._items.move_to_end(key)
        return entry

    def put(self, key: tuple[int, ...], entry: PromptEntry) -> None:
        if entry.length > self.max_tokens or key in self._items:
            return
        stored = PromptEntry(kv=entry.kv, last=entry.last, length=entry.length)  # full logits are not kept
        self._items[key] = stored
        self._tokens += entry.length
        while self._tokens > self.max_tokens:
            _, old = self._items.popitem(last=False)
            self._tokens -= old.length

    def clear(self) -> None:
        self._items.clear()
        self._tokens = 0

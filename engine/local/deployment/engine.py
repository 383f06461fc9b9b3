"""The model runner: batched prefill and decode over one left-padded KV cache.

All methods run on the scheduler's single worker thread (never on the event loop). The batch is a
transformers ``DynamicCache`` of shape [rows, kv_heads, T, head_dim] per layer, left-padded: row i
holds its real tokens in the last ``T - pad[i]`` slots. A decode step feeds each row's last sampled
token with an attention mask hiding the padding and per-row position ids (its real length), so a
row's logits do not depend on who else is in the batch (up to fp32 summation order, ~1e-6).

Rows join after a (left-padded, batched) prefill of their prompts: the two caches are padded to a
common length and concatenated. Rows leave by index selection, after which padding that every
remaining row shares is trimmed. Both are whole-cache copies, cheap next to a forward at these sizes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
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

    def __init__(self, model: Any, pad_token_id: int | None = None) -> None:
        self.model = model  # a transformers causal LM (Any: its config is not typed)
        cfg = model.config
        self.vocab_size = int(cfg.vocab_size)
        self.max_positions = int(cfg.max_position_embeddings)
        self.pad_id = int(pad_token_id if pad_token_id is not None else (cfg.pad_token_id or PAD_ID_FALLBACK))
        self._cache: DynamicCache | None = None
        self._pad: list[int] = []  # left padding per row
        self._len = 0  # T, cache length incl. padding

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
        """Swap weights in place. Only called with an empty batch; any cached K/V is dropped."""
        self.reset()
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
        identical prompts admitted together are computed once and their K/V copied (GRPO-style
        fan-out sends the same prompt n times). Returns fp32 logits per new row: [rows, V] at the
        last prompt position, or with ``full_logits`` [rows, L, V] left-padded to the longest prompt
        L (a row's real positions are the last len(prompt) ones).
        """
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
        pads = [width - len(p) for p in prompts]
        logits = out.logits.float()
        if rows is not None and rows != list(range(n)):
            index = torch.tensor(rows, dtype=torch.long)
            layers: list[Any] = list(cache.layers)
            for layer in layers:
                layer.keys = layer.keys.index_select(0, index)
                layer.values = layer.values.index_select(0, index)
            pads = [pads[i] for i in rows]
            logits = logits.index_select(0, index)
        self._join(cache, pads, width)
        return logits if full_logits else logits[:, -1]

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

    def _join(self, cache: DynamicCache, pads: list[int], width: int) -> None:
        if self._cache is None:
            self._cache, self._pad, self._len = cache, pads, width
            return
        grow_old, grow_new = max(0, width - self._len), max(0, self._len - width)
        olds: list[Any] = list(self._cache.layers)
        news: list[Any] = list(cache.layers)
        for old, new in zip(olds, news, strict=True):
            old.keys = torch.cat([_left_pad(old.keys, grow_old), _left_pad(new.keys, grow_new)], 0)
            old.values = torch.cat([_left_pad(old.values, grow_old), _left_pad(new.values, grow_new)], 0)
        self._pad = [p + grow_old for p in self._pad] + [p + grow_new for p in pads]
        self._len = max(self._len, width)


def _left_pad(t: torch.Tensor, n: int) -> torch.Tensor:
    if n == 0:
        return t
    b, h, _, d = t.shape
    return torch.cat([t.new_zeros((b, h, n, d)), t], dim=2)

"""Per-model training state: the module (peft LoRA or full-parameter), AdamW, and the compute.

Every method here is blocking torch code: call it only from the model's worker thread (the ordered
queue in ``ordering`` guarantees one at a time, in seq_id order).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from engine.local.trainer import checkpoints
from engine.local.trainer.config import TrainerBadRequest
from engine.local.trainer.losses import get_loss
from engine.local.trainer.microbatch import merge_metrics, microbatches
from engine.local.trainer.proto import DatumIn

_ATTN = ["q_proj", "k_proj", "v_proj", "o_proj"]
_MLP = ["gate_proj", "up_proj", "down_proj"]
LORA_ALPHA = 32


@dataclass(frozen=True)
class LoraSpec:
    rank: int
    seed: int | None = None
    train_unembed: bool = True
    train_mlp: bool = True
    train_attn: bool = True

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class AdamHyper:
    learning_rate: float = 1e-4
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-12
    weight_decay: float = 0.0
    grad_clip_norm: float = 0.0


def build_module(base: Any, lora: LoraSpec) -> Any:
    """A trainable copy of ``base``. Rank 0 = full-parameter; otherwise peft LoRA adapters.

    The embedded models tie lm_head to the input embeddings, so an lm_head adapter would either be
    lost or rewrite the embeddings when merged for sampling: the unembedding is left untrained.
    """
    module = copy.deepcopy(base)
    if lora.rank <= 0:
        for p in module.parameters():
            p.requires_grad_(True)
        return module
    from peft import LoraConfig, get_peft_model

    targets = (_ATTN if lora.train_attn else []) + (_MLP if lora.train_mlp else [])
    if not targets:
        raise TrainerBadRequest("lora_config must train attention or MLP layers (train_attn/train_mlp)")
    if lora.seed is not None:
        torch.manual_seed(lora.seed)
    config = LoraConfig(r=lora.rank, lora_alpha=LORA_ALPHA, lora_dropout=0.0, target_modules=targets)
    return get_peft_model(module, config)


def check_tokens(data: Sequence[DatumIn], vocab_size: int, max_length: int) -> None:
    """Model-dependent validation, run before a future is issued."""
    for i, d in enumerate(data):
        if d.tokens.size > max_length:
            raise TrainerBadRequest(f"data[{i}]: {d.tokens.size} tokens exceed the context of {max_length}")
        for name, arr in [("model_input", d.tokens), ("target_tokens", d.inputs.get("target_tokens"))]:
            if arr is not None and arr.size and (arr.min() < 0 or arr.max() >= vocab_size):
                raise TrainerBadRequest(f"data[{i}].{name}: token id out of range [0, {vocab_size})")


@dataclass
class ModelState:
    model_id: str
    base_model: str
    lora: LoraSpec
    module: Any
    vocab_size: int
    max_length: int
    optimizer: torch.optim.AdamW | None = None
    optimizer_steps: int = 0
    last_snapshot: tuple[str, dict[str, torch.Tensor]] | None = None
    # The last snapshot's name when its weights are not in memory (restored from a checkpoint's
    # meta): a delta against it materializes the parent from the bucket.
    last_snapshot_name: str | None = None
    created: float = field(default_factory=time.time)
    # Activation budget of one forward_backward micro-batch (see ``microbatch``).
    microbatch_bytes: int = 1 << 30

    @property
    def is_lora(self) -> bool:
        return self.lora.rank > 0

    @property
    def last_snapshot_id(self) -> str | None:
        return self.last_snapshot[0] if self.last_snapshot else self.last_snapshot_name

    def trainable(self) -> dict[str, torch.nn.Parameter]:
        return {n: p for n, p in self.module.named_parameters() if p.requires_grad}

    def _optimizer(self) -> torch.optim.AdamW:
        if self.optimizer is None:
            self.optimizer = torch.optim.AdamW(
                list(self.trainable().values()), lr=1e-4, betas=(0.9, 0.95), eps=1e-12
            )
        return self.optimizer

    # --- compute --------------------------------------------------------------------------------

    def forward_backward(
        self, data: Sequence[DatumIn], loss_fn: str, config: dict[str, float | str], forward_only: bool
    ) -> tuple[list[dict[str, np.ndarray]], dict[str, float]]:
        loss = get_loss(loss_fn)
        lengths = [d.tokens.size for d in data]
        if any("target_tokens" not in d.inputs for d in data):
            raise TrainerBadRequest("every datum needs loss_fn_inputs['target_tokens']")
        trailing = {d.inputs["target_tokens"].shape[1:] for d in data}
        if len(trailing) != 1:
            raise TrainerBadRequest(
                "target_tokens must have the same trailing shape [T] or [T, K] in every datum"
            )
        (tail,) = trailing
        names = set().union(*(d.inputs for d in data)) - {"target_tokens"}
        # Checked for the whole request before any micro-batch runs its backward.
        for d in data:
            for name in names:
                if name not in d.inputs:
                    raise TrainerBadRequest(f"loss_fn_inputs[{name!r}] must be given for every datum or none")
                if d.inputs[name].shape[1:] != tail:
                    raise TrainerBadRequest(f"loss_fn_inputs[{name!r}] must have the shape of target_tokens")
        cfg = self.module.config
        groups = microbatches(
            lengths,
            self.microbatch_bytes,
            int(cfg.num_hidden_layers),
            int(cfg.num_attention_heads),
            int(cfg.vocab_size),
        )
        outputs: list[dict[str, np.ndarray]] = []
        parts: list[tuple[int, dict[str, float]]] = []
        for group in groups:
            chunk = [data[i] for i in group]
            outs, metrics = self._forward_backward(chunk, names, tail, loss, config, not forward_only)
            outputs += outs
            parts.append((len(chunk), metrics))
        metrics = merge_metrics(parts)
        metrics["num_tokens:sum"] = float(sum(lengths))
        return outputs, metrics

    def _forward_backward(
        self,
        data: Sequence[DatumIn],
        names: set[str],
        tail: tuple[int, ...],
        loss: Any,
        config: dict[str, float | str],
        grad: bool,
    ) -> tuple[list[dict[str, np.ndarray]], dict[str, float]]:
        """One micro-batch; gradients accumulate into the parameters' ``.grad``."""
        lengths = [d.tokens.size for d in data]
        batch, width = len(data), max(lengths)
        # Right padding needs no attention mask: causal attention never looks ahead to the pads,
        # and pads carry zero weights/advantages.
        ids = np.zeros((batch, width), np.int64)
        padded = {n: np.zeros((batch, width, *tail), np.float32) for n in names}
        targets = np.zeros((batch, width, *tail), np.int64)
        for b, d in enumerate(data):
            n = lengths[b]
            ids[b, :n] = d.tokens
            targets[b, :n] = d.inputs["target_tokens"]
            for name in padded:
                padded[name][b, :n] = d.inputs[name]
        inputs = {n: torch.from_numpy(v) for n, v in padded.items()}
        tgt = torch.from_numpy(targets)
        with torch.set_grad_enabled(grad):
            logits = self.module(input_ids=torch.from_numpy(ids), use_cache=False).logits
            logsm = torch.log_softmax(logits.float(), dim=-1)
            logp = (
                logsm.gather(-1, tgt.unsqueeze(-1)).squeeze(-1)
                if not tail
                else logsm.unsqueeze(2).expand(-1, -1, tail[0], -1).gather(-1, tgt.unsqueeze(-1)).squeeze(-1)
            )
            value, metrics = loss(logp, inputs, config)
            if grad:
                value.backward()
        out_lp = logp.detach().numpy()
        return [{"logprobs": np.ascontiguousarray(out_lp[b, : lengths[b]])} for b in range(batch)], metrics

    def optim_step(self, hp: AdamHyper) -> dict[str, float]:
        opt = self._optimizer()
        params = [p for p in self.trainable().values() if p.grad is not None]
        grad_norm = (
            float(
                torch.nn.utils.clip_grad_norm_(
                    params, hp.grad_clip_norm if hp.grad_clip_norm > 0 else float("inf")
                )
            )
            if params
            else 0.0
        )
        for group in opt.param_groups:
            group.update(
                lr=hp.learning_rate, betas=(hp.beta1, hp.beta2), eps=hp.eps, weight_decay=hp.weight_decay
            )
        opt.step()
        opt.zero_grad(set_to_none=True)
        self.optimizer_steps += 1
        return {
            "optimizer_step:max": float(self.optimizer_steps),
            "grad_norm:mean": grad_norm,
            "learning_rate:mean": hp.learning_rate,
        }

    # --- weights --------------------------------------------------------------------------------

    def sampler_state(self) -> dict[str, torch.Tensor]:
        """Plain ``AutoModelForCausalLM.state_dict()`` keys, LoRA merged, fp32, detached copies."""
        if self.is_lora:
            merged = copy.deepcopy(self.module).merge_and_unload()
            state = merged.state_dict()
        else:
            state = self.module.state_dict()
        return {k: v.detach().clone().contiguous() for k, v in state.items()}

    def meta(self) -> dict[str, Any]:
        return {
            "model_id": self.model_id,
            "base_model": self.base_model,
            "lora": self.lora.to_json(),
            "optimizer_steps": self.optimizer_steps,
            "last_sampler_snapshot": self.last_snapshot_id,
        }

    def load(self, loaded: checkpoints.LoadedState, with_optimizer: bool) -> None:
        params = self.trainable()
        missing = sorted(set(params) - set(loaded.weights))
        unexpected = sorted(set(loaded.weights) - set(params))
        if missing or unexpected:
            raise TrainerBadRequest(
                f"checkpoint does not fit this model: missing {missing[:3]}, unexpected {unexpected[:3]}"
            )
        with torch.no_grad():
            for name, p in params.items():
                p.copy_(loaded.weights[name])
                p.grad = None
        self.optimizer = None
        self.last_snapshot = None
        self.last_snapshot_name = loaded.meta.get("last_sampler_snapshot")
        if with_optimizer:
            checkpoints.restore_optimizer(self._optimizer(), params, loaded.optimizer)
            self.optimizer_steps = int(loaded.meta.get("optimizer_steps", 0))

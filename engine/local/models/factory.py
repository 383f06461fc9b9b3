"""The offline model factory: small causal LMs and a byte-level BPE tokenizer built locally.

``resolve_model(name_or_path)`` returns an ordinary Hugging Face model directory: either a local
directory the user points at, or one of the named embedded models (``tiny``, ``small``), built on
first use into a cache folder from a fixed transformers config, a fixed seed and a tokenizer trained
on a fixed corpus. The same name always yields the same weights (``fingerprint`` checks it), and
nothing is downloaded: loading goes through ``AutoModelForCausalLM``/``AutoTokenizer`` with
``local_files_only``.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from engine.local.models.corpus import corpus

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|pad|>"]
BUILD_VERSION = 1  # bump when the recipe below changes, so caches rebuild

# ChatML, as Qwen uses; add_generation_prompt opens the assistant turn.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


@dataclass(frozen=True)
class ModelSpec:
    """One named embedded model: a Qwen3-style config plus the tokenizer's vocabulary size."""

    name: str
    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    intermediate_size: int
    max_position_embeddings: int = 1024
    seed: int = 0


SPECS: dict[str, ModelSpec] = {
    # ~0.7M parameters: fast enough for every test.
    "tiny": ModelSpec("tiny", 1024, 128, 4, 4, 2, 256),
    # ~10M parameters: the demo model, trainable on 2 CPU cores. A 4096-token context (RoPE: the
    # weights do not depend on it, see tests/test_models.py) fits the cookbook's guess_number recipe,
    # whose ten-turn games run to ~1.8k tokens with this tokenizer.
    "small": ModelSpec("small", 1024, 384, 6, 6, 2, 1024, max_position_embeddings=4096),
}


def cache_root() -> Path:
    return Path(os.environ.get("HOTLOOP_CACHE", Path.home() / ".cache" / "hotloop")) / "models"


def spec_key(spec: ModelSpec) -> str:
    payload = json.dumps({"spec": asdict(spec), "build": BUILD_VERSION}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:12]


def _train_tokenizer(spec: ModelSpec) -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=spec.vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus(spec.seed), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|pad|>",
        bos_token=None,
        unk_token=None,
        additional_special_tokens=["<|im_start|>", "<|endoftext|>"],
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def _build(spec: ModelSpec, target: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, Qwen3Config

    tokenizer = _train_tokenizer(spec)
    vocab = len(tokenizer)
    config = Qwen3Config(
        vocab_size=vocab,
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_hidden_layers,
        num_attention_heads=spec.num_attention_heads,
        num_key_value_heads=spec.num_key_value_heads,
        head_dim=spec.hidden_size // spec.num_attention_heads,
        max_position_embeddings=spec.max_position_embeddings,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
        pad_token_id=tokenizer.convert_tokens_to_ids("<|pad|>"),
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.seed)
        model = AutoModelForCausalLM.from_config(config, torch_dtype=torch.float32)
    model.generation_config.eos_token_id = config.eos_token_id
    model.generation_config.pad_token_id = config.pad_token_id
    model.save_pretrained(target, safe_serialization=True)
    tokenizer.save_pretrained(target)
    (target / "hotloop_model.json").write_text(
        json.dumps({"name": spec.name, "spec": asdict(spec), "build": BUILD_VERSION}, indent=2)
    )


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)  # several test processes may build the same model at once
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def build_model_dir(name: str) -> Path:
    """Build the named embedded model into the cache (once) and return its directory."""
    if name not in SPECS:
        raise ValueError(f"unknown embedded model {name!r}; known: {sorted(SPECS)}")
    spec = SPECS[name]
    root = cache_root()
    target = root / f"{name}-{spec_key(spec)}"
    if (target / "hotloop_model.json").exists():
        return target
    with _locked(root / f".{name}.lock"):
        if (target / "hotloop_model.json").exists():
            return target
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=root))
        try:
            _build(spec, tmp)
            os.replace(tmp, target)  # atomic: readers never see a half-written directory
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def resolve_model(name_or_path: str) -> Path:
    """A local Hugging Face directory as given, or the embedded model of that name (built if needed)."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        if not (path / "config.json").exists():
            raise ValueError(f"model directory {path} has no config.json")
        return path
    if name_or_path in SPECS:
        return build_model_dir(name_or_path)
    raise ValueError(
        f"model {name_or_path!r} is neither a local Hugging Face directory nor an embedded model "
        f"({', '.join(sorted(SPECS))})"
    )


def load_tokenizer(name_or_path: str) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(resolve_model(name_or_path), local_files_only=True)


def load_model(name_or_path: str, dtype: str = "float32") -> Any:
    """An eval-mode causal LM on the CPU, loaded from the resolved directory."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        resolve_model(name_or_path), local_files_only=True, dtype=getattr(torch, dtype)
    )
    model.eval()
    return model


def fingerprint(model: Any) -> str:
    """sha256 over the state dict in name order: equal fingerprints mean equal weights."""
    h = hashlib.sha256()
    for key, tensor in sorted(model.state_dict().items()):
        h.update(key.encode())
        h.update(tensor.detach().contiguous().cpu().numpy().tobytes())
    return h.hexdigest()

from __future__ import annotations

from pathlib import Path

import pytest

from engine.local.models import build_model_dir, fingerprint, load_model, load_tokenizer, resolve_model
from engine.local.models.factory import SPECS


def test_tiny_model_is_an_ordinary_hf_directory(tiny_model_dir: Path) -> None:
    assert (tiny_model_dir / "config.json").exists()
    assert (tiny_model_dir / "model.safetensors").exists()
    assert (tiny_model_dir / "tokenizer.json").exists()
    # A path works wherever a name does.
    assert resolve_model(str(tiny_model_dir)) == tiny_model_dir


def test_tiny_is_about_one_million_parameters(tiny_model_dir: Path) -> None:
    model = load_model(str(tiny_model_dir))
    n = sum(p.numel() for p in model.parameters())
    assert 300_000 < n < 2_000_000


def test_same_name_same_weights(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    a = load_model("tiny")
    b = load_model(str(tiny_model_dir))
    assert fingerprint(a) == fingerprint(b)
    # The two above are the same cached directory; the property is that a fresh build agrees.
    monkeypatch.setenv("HOTLOOP_CACHE", str(tmp_path))
    rebuilt = build_model_dir("tiny")
    assert rebuilt != tiny_model_dir and rebuilt.is_relative_to(tmp_path)
    assert fingerprint(load_model(str(rebuilt))) == fingerprint(a)
    assert (rebuilt / "tokenizer.json").read_bytes() == (tiny_model_dir / "tokenizer.json").read_bytes()


def test_tokenizer_round_trips_and_has_a_chat_template(tiny_model_dir: Path) -> None:
    tok = load_tokenizer(str(tiny_model_dir))
    text = "What is 12 + 30? The answer is 42. ünïcödé"
    assert tok.decode(tok.encode(text)) == text
    prompt = tok.apply_chat_template(
        [{"role": "user", "content": "hi"}], add_generation_prompt=True, tokenize=False
    )
    assert prompt == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    assert tok.eos_token == "<|im_end|>"
    assert len(tok) == SPECS["tiny"].vocab_size


def test_unknown_model_names_the_choices() -> None:
    with pytest.raises(ValueError, match="tiny"):
        resolve_model("no-such-model")


def test_the_context_length_does_not_change_the_weights(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Why `small` could get a 4096-token context without new weights: RoPE has no learned positions,
    so the same spec with another max_position_embeddings builds bit-identical weights."""
    import dataclasses

    monkeypatch.setenv("HOTLOOP_CACHE", str(tmp_path))
    longer = dataclasses.replace(SPECS["tiny"], max_position_embeddings=8192)
    monkeypatch.setitem(SPECS, "tiny", longer)
    rebuilt = build_model_dir("tiny")
    assert load_model(str(rebuilt)).config.max_position_embeddings == 8192
    assert fingerprint(load_model(str(rebuilt))) == fingerprint(load_model(str(tiny_model_dir)))
    assert SPECS["small"].max_position_embeddings == 4096  # room for guess_number's ~1.8k tokens

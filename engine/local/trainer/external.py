"""``save_weights_external``: an HF-format export of a model's weights, downloadable by signed URL.

What the cookbook's ``weights.download`` uses: it saves (``POST save_weights_external``, optionally
age-encrypted to recipients it names), asks for one signed URL per file (``GET .../checkpoints/
external_weights/<name>/external_weights_urls``), fetches each URL with plain ``urllib`` (no API
key header), renews the TTL and deletes the export when done.

Layout: ``STATE_DIR/<run_id>/external_weights/<name>/``. A LoRA model exports its PEFT adapter
(``adapter_config.json``, ``adapter_model.safetensors``), which is what the cookbook's merge tools
read; a full-parameter model exports a plain HF model directory (config, safetensors, tokenizer).
With ``age_encryption_recipients`` every file is stored as ``<file>.age`` and the plaintext never
stays on disk. Encryption needs ``pyrage`` on the trainer (tinker-cookbook depends on it).

Signed URLs are ``/hotloop/files/<run>/<name>/<file>?expires=<unix>&sig=<hmac>``, outside the API-key
check (the signature is the credential), keyed by a secret of this trainer process: they stop
working when it exits, as Tinker's stop when they expire.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

from engine.local.trainer import checkpoints
from engine.local.trainer.config import NotFound, TrainerBadRequest
from engine.local.trainer.models import ModelState
from engine.weights.names import SnapshotError, contained

URL_TTL_S = 3600
KIND = "external_weights"


def export_dir(state_dir: Path, run_id: str, name: str) -> Path:
    """``STATE_DIR/<run_id>/external_weights/<name>``, refused through a symlink (as state_path)."""
    checkpoints.state_path(state_dir, run_id, name)  # validates the run id and the name
    try:
        return contained(state_dir, run_id, KIND, name)
    except SnapshotError as exc:
        raise TrainerBadRequest(f"external weights {run_id}/{name}: {exc}") from exc


def parse_recipients(value: Any) -> list[str] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not value or not all(isinstance(r, str) and r for r in value):
        raise TrainerBadRequest("age_encryption_recipients must be a non-empty list of age/SSH public keys")
    if len(value) > 64:
        raise TrainerBadRequest(f"age_encryption_recipients: at most 64 recipients, got {len(value)}")
    try:
        _recipients(value)
    except ImportError as exc:
        raise TrainerBadRequest(
            "age_encryption_recipients: encrypted exports need the 'pyrage' package on the trainer"
        ) from exc
    return list(value)


def _recipients(keys: list[str]) -> list[Any]:
    import pyrage

    out: list[Any] = []
    for i, key in enumerate(keys):
        try:
            out.append(
                pyrage.ssh.Recipient.from_str(key)
                if key.startswith("ssh-")
                else pyrage.x25519.Recipient.from_str(key)
            )
        except Exception as exc:  # pyrage.RecipientError, or a ValueError from a malformed key
            raise TrainerBadRequest(
                f"age_encryption_recipients[{i}] is not an age or SSH public key"
            ) from exc
    return out


def _write_plain(state: ModelState, target: Path, tokenizer: Any) -> None:
    # A PeftModel saves only its adapter; a plain model saves the whole HF directory.
    state.module.save_pretrained(str(target), safe_serialization=True)
    if not state.is_lora and tokenizer is not None:
        tokenizer.save_pretrained(str(target))


def save_external(state: ModelState, target: Path, tokenizer: Any, recipients: list[str] | None) -> int:
    """Blocking (model thread): export atomically (stage, then rename); returns the bytes written."""
    if target.exists():
        raise TrainerBadRequest(f"external weights {target.name!r} already exist for this run")
    target.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        _write_plain(state, stage, tokenizer)
        if recipients:
            import pyrage

            keys = _recipients(recipients)
            for f in sorted(p for p in stage.rglob("*") if p.is_file()):
                pyrage.encrypt_file(str(f), str(f) + ".age", keys)
                f.unlink()
        os.rename(stage, target)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return sum(f.stat().st_size for f in target.rglob("*") if f.is_file())


class UrlSigner:
    """HMAC-signed download URLs for export files (a secret per trainer process)."""

    def __init__(self, key: bytes | None = None) -> None:
        self._key = key or secrets.token_bytes(32)

    def _sig(self, rel: str, expires: int) -> str:
        return hmac.new(self._key, f"{rel}|{expires}".encode(), hashlib.sha256).hexdigest()

    def urls(self, origin: str, root: Path, run_id: str, name: str) -> dict[str, Any]:
        """Blocking (lists files): the ``ExternalWeightsUrlsResponse`` body."""
        if not root.is_dir():
            raise NotFound(f"external weights tinker://{run_id}/{KIND}/{name} not found")
        expires = int(time.time()) + URL_TTL_S
        files = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
        urls = {}
        for rel in files:
            path = f"{run_id}/{name}/{rel}"
            urls[rel] = (
                f"{origin}/hotloop/files/{quote(path)}?expires={expires}&sig={self._sig(path, expires)}"
            )
        return {"urls": urls, "expires": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(expires))}

    def resolve(self, state_dir: Path, path: str, expires: str, sig: str) -> Path:
        """The file a signed URL names; NotFound for a bad or expired signature (no hint which)."""
        try:
            when = int(expires)
        except ValueError:
            raise NotFound("no such file") from None
        if when < time.time() or not hmac.compare_digest(sig, self._sig(path, when)):
            raise NotFound("no such file (or the signed URL expired)")
        run_id, _, rest = path.partition("/")
        name, _, rel = rest.partition("/")
        root = export_dir(state_dir, run_id, name)
        target = (root / rel).resolve()
        if not rel or not target.is_relative_to(root.resolve()) or not target.is_file():
            raise NotFound("no such file")
        return target

"""Run tinker-cookbook code, unmodified, against a hotloop trainer.

The cookbook looks a tokenizer up by model name (``tokenizer_utils.get_tokenizer("Qwen/Qwen3-8B")``
downloads it from the Hugging Face hub). Against ``hotloop serve trainer --model small --alias
Qwen/Qwen3-8B`` that would be the wrong tokenizer even if it could be downloaded: the trainer serves
the embedded model, whose tokenizer is its own. ``register_trainer_tokenizers`` asks the trainer
which names it serves (``get_server_capabilities``, with hotloop's ``tokenizer_id``: the model's
local directory) and registers that directory's tokenizer for each name with the cookbook's own
``register_tokenizer`` hook. Renderers then come from the cookbook as usual (for Qwen3 names,
``qwen3``: ChatML, which the embedded tokenizer has as special tokens).

    hotloop cookbook --trainer http://127.0.0.1:PORT tinker_cookbook.recipes.sl_loop model_name=...

runs the module as ``python -m`` would, after registering, with ``TINKER_BASE_URL`` set. The trainer
must be on this machine (the tokenizer directory is read locally).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import runpy
import sys
import urllib.request
from pathlib import Path
from typing import Any


def trainer_models(
    base_url: str, api_key: str | None = None, timeout_s: float = 30.0
) -> list[dict[str, Any]]:
    """``supported_models`` of the trainer at ``base_url``."""
    request = urllib.request.Request(
        f"{base_url.rstrip('/')}/api/v1/get_server_capabilities",
        headers={"X-API-Key": api_key or os.environ.get("TINKER_API_KEY", "tml-local")},
    )
    with urllib.request.urlopen(request, timeout=timeout_s) as resp:
        body = json.loads(resp.read())
    models = body.get("supported_models") if isinstance(body, dict) else None
    return [m for m in models or [] if isinstance(m, dict)]


@functools.cache
def _tokenizer(directory: str) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(directory, local_files_only=True)


def register_trainer_tokenizers(base_url: str, api_key: str | None = None) -> list[str]:
    """Register, for each model name the trainer serves, its local tokenizer with tinker-cookbook.
    Returns the names registered (a name whose tokenizer directory is not on this machine is not)."""
    from tinker_cookbook.tokenizer_utils import register_tokenizer

    names = []
    for model in trainer_models(base_url, api_key):
        name, directory = model.get("model_name"), model.get("tokenizer_id")
        if isinstance(name, str) and isinstance(directory, str) and Path(directory).is_dir():
            register_tokenizer(name, functools.partial(_tokenizer, directory))
            names.append(name)
    return names


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--trainer", default=None, help="the trainer's base URL (default: $TINKER_BASE_URL)")
    parser.add_argument("module", help="the module to run, e.g. tinker_cookbook.recipes.sl_loop")
    parser.add_argument("args", nargs=argparse.REMAINDER, help="the module's own arguments")


def main(args: argparse.Namespace) -> int:
    base_url = args.trainer or os.environ.get("TINKER_BASE_URL")
    if not base_url:
        print("hotloop cookbook: give --trainer URL or set TINKER_BASE_URL", file=sys.stderr)
        return 2
    os.environ["TINKER_BASE_URL"] = base_url
    os.environ.setdefault("TINKER_API_KEY", "tml-local")
    names = register_trainer_tokenizers(base_url)
    print(f"hotloop cookbook: tokenizers registered for {names}", file=sys.stderr)
    sys.argv = [args.module, *args.args]
    runpy.run_module(args.module, run_name="__main__", alter_sys=True)
    return 0

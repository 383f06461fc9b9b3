"""Model aliases: serve an embedded model under the name a recipe uses (``Qwen/Qwen3-8B``).

``--alias NAME=MODEL`` (or ``--alias NAME`` for the process's own ``--model``) on ``hotloop up`` and
``hotloop serve trainer``. A client asking for NAME gets MODEL, and sees NAME echoed back: nothing is
renamed or linked on disk. The alias says nothing about the tokenizer: clients that look a tokenizer
up by name (tinker-cookbook's ``get_tokenizer``) must be pointed at the model's own one (see
``engine.local.cookbook``).
"""

from __future__ import annotations

from collections.abc import Iterable


class AliasError(ValueError):
    """A malformed ``--alias`` value; the message names it."""


def parse_aliases(values: Iterable[str], default_model: str | None) -> dict[str, str]:
    """``["Qwen/Qwen3-8B=small", "Qwen/Qwen3-4B"]`` -> ``{name: model}``; a bare NAME maps to
    ``default_model``. Pure: raises AliasError for an empty part, a missing default, or one name
    given two models."""
    out: dict[str, str] = {}
    for value in values:
        name, sep, model = value.partition("=")
        name, model = name.strip(), model.strip()
        if not name or (sep and not model):
            raise AliasError(f"--alias {value!r}: expected NAME or NAME=MODEL")
        if not sep:
            if not default_model:
                raise AliasError(f"--alias {value!r}: give NAME=MODEL, or set --model for a bare NAME")
            model = default_model
        if out.get(name, model) != model:
            raise AliasError(f"--alias {name!r} is given twice, for {out[name]!r} and {model!r}")
        out[name] = model
    return out

"""Loggers that resolve structlog's configuration at each call, not at import.

``engine.log.get_logger`` binds at once, which freezes whatever configuration exists at import
time; the CLI imports subcommand modules before it calls ``engine.log.configure``, so such
loggers would print to stdout, where ``hotloop serve trainer`` owes exactly one URL line.
"""

from __future__ import annotations

from typing import Any

from engine.log import get_logger


class LazyLogger:
    def __init__(self, name: str) -> None:
        self._name = name

    def __getattr__(self, attr: str) -> Any:
        return getattr(get_logger(self._name), attr)

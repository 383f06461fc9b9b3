"""structlog, configured once for the whole process.

Every hotloop module logs through ``engine.log.get_logger``. ``configure`` is idempotent; the CLI
calls it with the user's choice of renderer, a library user may call it or configure structlog
themselves. A redaction processor runs before rendering so secrets never reach a sink.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

_SECRET_KEYS = re.compile(
    # "token" only as a whole word or suffix: max_tokens and num_tokens:sum are counts, not secrets.
    r"(api[_-]?key|secret|passw(or)?d|authorization|bearer|credential|jwt|(^|[_-])token$)",
    re.IGNORECASE,
)
_BEARER = re.compile(r"(Bearer\s+)[A-Za-z0-9._\-]+", re.IGNORECASE)
_KEYISH = re.compile(r"\b(tml-|fw_|sk-|hl-)[A-Za-z0-9._\-]{6,}")
REDACTED = "***"

_configured = False


class _StderrLogger:
    """Writes each rendered line to the *current* sys.stderr (pytest and daemons swap it), never stdout:
    stdout belongs to machine-readable lines such as a server's URL."""

    def msg(self, message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    log = debug = info = warn = warning = error = critical = exception = fatal = failure = msg


def _stderr_logger_factory(*_args: Any) -> _StderrLogger:
    return _StderrLogger()


def _redact_value(value: Any) -> Any:
    if isinstance(value, str):
        return _KEYISH.sub(lambda m: m.group(1) + REDACTED, _BEARER.sub(r"\1" + REDACTED, value))
    if isinstance(value, dict):
        return {k: (REDACTED if _SECRET_KEYS.search(str(k)) else _redact_value(v)) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_redact_value(v) for v in value)
    return value


def redact_secrets(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """structlog processor: blank values of secret-looking keys and key-shaped substrings."""
    for key in list(event_dict):
        if key != "event" and _SECRET_KEYS.search(key):
            event_dict[key] = REDACTED
        else:
            event_dict[key] = _redact_value(event_dict[key])
    return event_dict


def configure(renderer: str | None = None, level: str | None = None) -> None:
    """Configure structlog once. renderer: "console" or "json" (default from HOTLOOP_LOG_FORMAT)."""
    global _configured
    renderer = renderer or os.environ.get("HOTLOOP_LOG_FORMAT", "console")
    level_name = (level or os.environ.get("HOTLOOP_LOG_LEVEL", "INFO")).upper()
    if renderer not in ("console", "json"):
        raise ValueError(f"HOTLOOP_LOG_FORMAT must be 'console' or 'json', got {renderer!r}")
    final: Any = (
        structlog.processors.JSONRenderer()
        if renderer == "json"
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            # Tracebacks are rendered to text first, so the redaction covers exception messages too.
            structlog.processors.format_exc_info,
            redact_secrets,
            final,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(getattr(logging, level_name, logging.INFO)),
        logger_factory=_stderr_logger_factory,
        cache_logger_on_first_use=False,
    )
    _configured = True


def get_logger(name: str, **bound: Any) -> Any:
    """A structlog logger bound to a component name (configures defaults if nobody has yet)."""
    if not _configured:
        configure()
    return structlog.get_logger(name).bind(component=name, **bound)

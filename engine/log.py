"""structlog on top of the standard library's logging: a library that configures nothing.

Every hotloop module logs through ``engine.log.get_logger``. Its events go to the stdlib logger
``hotloop.<name>`` after a redaction processor has blanked secrets, so a host application that embeds
hotloop sees them through its own logging configuration (handlers, levels, structlog's
``ProcessorFormatter``) and nothing global is touched at import: not structlog's configuration, not
the root logger. Only ``configure`` -- called by the ``hotloop`` command, or by a host that wants
hotloop's renderers -- attaches a handler, and only to the ``hotloop`` logger. A clipping
processor after the redaction bounds every value, so a request's payload echoed into a field or an
exception message cannot turn one log line into megabytes.

Under failure, logs stay useful and small. ``configure`` also takes over the loggers of the libraries
hotloop drives (``tinker``, whose retry loop and telemetry log through stdlib logging and would
otherwise reach Python's last-resort handler as raw lines and tracebacks): their records at WARNING
and above are rendered like hotloop's, one line each, a traceback reduced to its exception's type and
message. And the handler drops repeats: an identical line (timestamp aside) passes at most
``REPEAT_BURST`` times per ``REPEAT_WINDOW_S``; the next one to pass after a window says how many were
dropped. None of this happens at import: a host that does not call ``configure`` keeps its own
logging exactly as it set it up.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import time
from collections import OrderedDict
from collections.abc import MutableMapping
from itertools import islice
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
ROOT = "hotloop"
# Longest string a log field keeps (tracebacks get more room); containers keep their first items.
MAX_FIELD_CHARS = 1000
MAX_EXCEPTION_CHARS = 8000
MAX_ITEMS = 20
# Libraries whose stdlib loggers ``configure`` takes over (their own retry loops log through them).
FOREIGN_LOGGERS = ("tinker",)
REPEAT_BURST = 5
REPEAT_WINDOW_S = 60.0
_REPEAT_KEYS = 4096


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


def truncate(text: str, limit: int = MAX_FIELD_CHARS) -> str:
    """``text`` cut to ``limit`` characters, saying how much was dropped."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}...[{len(text) - limit} more chars]"


def _clipped(value: Any, limit: int, depth: int = 0) -> Any:
    if isinstance(value, str):
        return truncate(value, limit)
    if isinstance(value, bytes | bytearray):
        return f"<{len(value)} bytes>"
    if depth >= 4 and isinstance(value, dict | list | tuple | set | frozenset):
        return f"<{type(value).__name__} of {len(value)}>"
    if isinstance(value, dict):
        out = {str(k)[:100]: _clipped(v, limit, depth + 1) for k, v in islice(value.items(), MAX_ITEMS)}
        if len(value) > MAX_ITEMS:
            out["..."] = f"{len(value) - MAX_ITEMS} more"
        return out
    if isinstance(value, list | tuple | set | frozenset):
        kept = [_clipped(v, limit, depth + 1) for v in islice(value, MAX_ITEMS)]
        return [*kept, f"...{len(value) - MAX_ITEMS} more"] if len(value) > MAX_ITEMS else kept
    return value


def clip(value: Any, limit: int = 200) -> str:
    """A bounded ``repr`` of a (possibly huge, user-supplied) value, for messages and log fields.
    Only the first ``limit`` characters and ``MAX_ITEMS`` items are ever looked at."""
    return truncate(repr(_clipped(value, limit)), limit + 40)


def clip_values(_logger: Any, _method: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """structlog processor: bound every field (strings, containers, rendered tracebacks)."""
    for key in list(event_dict):
        limit = MAX_EXCEPTION_CHARS if key in ("exception", "event") else MAX_FIELD_CHARS
        event_dict[key] = _clipped(event_dict[key], limit)
    return event_dict


# The chain every hotloop event passes before it becomes a stdlib LogRecord. Tracebacks are rendered
# to text first, so the redaction covers exception messages too.
_PROCESSORS: list[Any] = [
    structlog.stdlib.filter_by_level,
    structlog.contextvars.merge_contextvars,
    structlog.processors.add_log_level,
    structlog.processors.TimeStamper(fmt="iso", utc=True),
    structlog.processors.format_exc_info,
    redact_secrets,
    clip_values,
    structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
]


def get_logger(name: str, **bound: Any) -> Any:
    """A logger bound to a component name; its events reach the stdlib logger ``hotloop.<name>``."""
    stdlib = logging.getLogger(f"{ROOT}.{name}")
    logger = structlog.wrap_logger(
        stdlib,
        processors=_PROCESSORS,
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    return logger.bind(component=name, **bound)


class _CurrentStderr(logging.Handler):
    """Writes each line to the *current* sys.stderr (pytest and daemons swap it), never stdout: stdout
    belongs to machine-readable lines such as a server's URL."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            print(self.format(record), file=sys.stderr, flush=True)
        except Exception:  # a broken stderr must not break the caller
            self.handleError(record)


class RepeatFilter(logging.Filter):
    """Lets an identical line (same logger, level and content, timestamp aside) through at most
    ``burst`` times per ``window_s``; the first one through after drops carries their count."""

    def __init__(self, burst: int = REPEAT_BURST, window_s: float = REPEAT_WINDOW_S) -> None:
        super().__init__()
        self.burst = burst
        self.window_s = window_s
        self._seen: OrderedDict[tuple[str, int, str], list[float]] = OrderedDict()  # start, count, dropped
        self.dropped = 0

    @staticmethod
    def key(record: logging.LogRecord) -> tuple[str, int, str]:
        msg = record.msg
        if isinstance(msg, dict):  # a structlog event dict (wrap_for_formatter)
            text = repr(sorted((k, v) for k, v in msg.items() if k != "timestamp"))
        else:
            text = record.getMessage()
        return record.name, record.levelno, text[:2000]

    def filter(self, record: logging.LogRecord) -> bool:
        now = time.monotonic()
        key = self.key(record)
        entry = self._seen.get(key)
        if entry is None or now - entry[0] >= self.window_s:
            dropped = int(entry[2]) if entry is not None else 0
            self._seen[key] = [now, 1.0, 0.0]
            self._seen.move_to_end(key)
            while len(self._seen) > _REPEAT_KEYS:
                self._seen.popitem(last=False)
            if dropped:
                _note_repeats(record, dropped, self.window_s)
            return True
        entry[1] += 1
        if entry[1] <= self.burst:
            return True
        entry[2] += 1
        self.dropped += 1
        return False


def _note_repeats(record: logging.LogRecord, dropped: int, window_s: float) -> None:
    if isinstance(record.msg, dict):
        record.msg = {**record.msg, "repeats_dropped": dropped}
    else:
        note = f"[{dropped} identical lines dropped in {window_s:g}s]"
        record.msg, record.args = f"{record.getMessage()} {note}", None


class OneLineErrors(logging.Filter):
    """A foreign library's record with a traceback becomes one line: the exception's type and message
    appended, the traceback dropped (a retried error is an attempt, not a crash)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and not isinstance(record.msg, dict):
            exc = record.exc_info[1]
            if exc is not None:
                record.msg, record.args = f"{record.getMessage()} ({type(exc).__name__}: {exc})", None
            record.exc_info, record.exc_text = None, None
        return True


def configure(renderer: str | None = None, level: str | None = None) -> None:
    """Render hotloop's events to stderr (idempotent). renderer: "console" or "json" (default from
    HOTLOOP_LOG_FORMAT); level from HOTLOOP_LOG_LEVEL, default INFO. Touches only the ``hotloop``
    logger."""
    renderer = renderer or os.environ.get("HOTLOOP_LOG_FORMAT", "console")
    level_name = (level or os.environ.get("HOTLOOP_LOG_LEVEL", "INFO")).upper()
    if renderer not in ("console", "json"):
        raise ValueError(f"HOTLOOP_LOG_FORMAT must be 'console' or 'json', got {renderer!r}")
    final: Any = (
        structlog.processors.JSONRenderer()
        if renderer == "json"
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    handler = _CurrentStderr()
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, final],
            # a foreign library's record gets the same fields hotloop's have
            foreign_pre_chain=[
                structlog.stdlib.add_logger_name,
                structlog.processors.add_log_level,
                structlog.processors.TimeStamper(fmt="iso", utc=True),
                redact_secrets,
                clip_values,
            ],
        )
    )
    handler.addFilter(OneLineErrors())
    handler.addFilter(RepeatFilter())
    wanted = getattr(logging, level_name, logging.INFO)
    for name, lowest in ((ROOT, wanted), *((f, max(wanted, logging.WARNING)) for f in FOREIGN_LOGGERS)):
        logger = logging.getLogger(name)
        for old in [h for h in logger.handlers if isinstance(h, _CurrentStderr)]:
            logger.removeHandler(old)
        logger.addHandler(handler)
        logger.setLevel(lowest)
        logger.propagate = False

"""The readiness line of local server processes: ``KEY=http://HOST:PORT`` on stdout.

``hotloop serve trainer|deployment`` announce themselves this way once listening (``--port 0`` picks
a free port, so the line is the only way to learn it). The control plane's supervisor reads it with
``url_from_line``; tests and benchmarks launch
servers with tests/support/launch.py.
"""

from __future__ import annotations

TRAINER_URL_KEY = "HOTLOOP_TRAINER_URL"
DEPLOYMENT_URL_KEY = "HOTLOOP_DEPLOYMENT_URL"


def url_from_line(line: str, key: str) -> str | None:
    """The value of a ``KEY=value`` readiness line, or None when the line is anything else."""
    line = line.strip()
    return line[len(key) + 1 :] if line.startswith(key + "=") else None

"""The readiness line of local server processes: ``KEY=http://HOST:PORT`` on stdout.

``hotloop serve trainer|deployment`` announce themselves this way once listening (``--port 0`` picks
a free port, so the line is the only way to learn it). The control plane's supervisor reads it with
``url_from_line`` and reports a dead child with ``describe_exit``; tests and benchmarks launch
servers with tests/support/launch.py.
"""

from __future__ import annotations

import signal

TRAINER_URL_KEY = "HOTLOOP_TRAINER_URL"
DEPLOYMENT_URL_KEY = "HOTLOOP_DEPLOYMENT_URL"


def url_from_line(line: str, key: str) -> str | None:
    """The value of a ``KEY=value`` readiness line, or None when the line is anything else."""
    line = line.strip()
    return line[len(key) + 1 :] if line.startswith(key + "=") else None


def describe_exit(returncode: int | None) -> str:
    """A process's state in words: "exited with code 3", "killed by SIGKILL", "still running"."""
    if returncode is None:
        return "still running"
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return f"killed by {name}"
    return f"exited with code {returncode}"

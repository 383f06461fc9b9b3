"""Helpers for the load-test tests: a mock server on its own thread, the CLI run in-process."""

from __future__ import annotations

import asyncio
import json
import threading
from pathlib import Path
from typing import Any

from aiohttp import web
from support.mock_server import MockConfig, start


class ThreadedMockServer:
    """tests/support/mock_server.py on a private event loop in a daemon thread (the CLI under test
    runs its own loop with asyncio.run on the test's thread)."""

    def __init__(self, cfg: MockConfig) -> None:
        self.cfg = cfg
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.runner: web.AppRunner | None = None
        self.url = ""

    def __enter__(self) -> ThreadedMockServer:
        self.thread.start()
        self.runner, self.url = asyncio.run_coroutine_threadsafe(start(self.cfg), self.loop).result(30)
        return self

    def stop_serving(self) -> None:
        """Close the listener and every connection (a server that goes away mid-run)."""
        runner, self.runner = self.runner, None
        if runner is not None:
            asyncio.run_coroutine_threadsafe(runner.cleanup(), self.loop).result(30)

    def __exit__(self, *exc: object) -> None:
        try:
            self.stop_serving()
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(30)
            self.loop.close()


def run_cli(args: list[str]) -> int:
    from engine.cli import main

    return main(["loadtest", "--no-progress", *args])


def read_outputs(out: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    summary = json.loads((out / "summary.json").read_text())
    rows = [json.loads(line) for line in (out / "requests.jsonl").read_text().splitlines() if line.strip()]
    return summary, rows


def assert_counts_match(summary: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    """summary.json's counts are exactly those of requests.jsonl, per cell and in total."""
    assert summary["totals"]["requests"] == len(rows)
    assert summary["totals"]["completed"] == sum(r["ok"] for r in rows)
    assert summary["totals"]["failed"] == sum(not r["ok"] for r in rows)
    for cell in summary["cells"]:
        mine = [r for r in rows if r["cell"] == cell["label"]]
        assert cell["requests"] == len(mine), cell["label"]
        assert cell["completed"] == sum(r["ok"] for r in mine), cell["label"]
        assert cell["failed"] == sum(not r["ok"] for r in mine), cell["label"]
        assert sum(cell["errors_by_kind"].values()) == cell["failed"]
        assert cell["ttft_ms"]["count"] == sum(1 for r in mine if r["ok"] and r["ttft_ms"] is not None)
    assert {r["cell"] for r in rows} <= {c["label"] for c in summary["cells"]}


def free_port() -> int:
    """A port nothing listens on (bound, then released)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])

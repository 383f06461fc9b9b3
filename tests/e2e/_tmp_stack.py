"""TEMPORARY stand-in for engine.local.stack.EmbeddedStack (not committed)."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path
from typing import Any


class UpProcess:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.account_id = "local"

    async def __aenter__(self) -> UpProcess:
        self.log = open(self.root / "up.log", "w")  # noqa: SIM115, ASYNC230
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "engine.cli",
            "up",
            "--port",
            "0",
            "--state-dir",
            str(self.root / "state"),
            stdout=asyncio.subprocess.PIPE,
            stderr=self.log,
            env={**os.environ, "TINKER_TELEMETRY": "0"},
        )
        assert self.proc.stdout is not None
        async with asyncio.timeout(120):
            self.base_url = (await self.proc.stdout.readline()).decode().strip().split("=", 1)[1]
            self.api_key = (await self.proc.stdout.readline()).decode().strip().split("=", 1)[1]
        return self

    async def __aexit__(self, *exc: Any) -> None:
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                async with asyncio.timeout(30):
                    await self.proc.wait()
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        self.log.close()

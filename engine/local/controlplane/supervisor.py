"""Child processes of the control plane: start, read the URL line, watch the exit, stop the group.

Each child runs in its own session (process group) so stopping it reaches anything it forked, and
asks the kernel for SIGTERM when the control plane dies (PR_SET_PDEATHSIG), so even a SIGKILLed
control plane leaves no orphans behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections import deque
from collections.abc import Mapping, Sequence
from pathlib import Path

from engine.local.launch import url_from_line
from engine.log import get_logger
from engine.processes import describe_exit, die_with_parent, signal_group, stop_group

log = get_logger("controlplane.supervisor")


class ChildStartError(RuntimeError):
    """The child exited, or never printed its URL line, before it was ready."""


class Child:
    """One supervised process that announces readiness with a ``PREFIX=http://...`` stdout line."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        url_prefix: str,
        log_path: Path,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.url_prefix = url_prefix
        self.log_path = log_path
        self.env = dict(env) if env is not None else None
        self.proc: asyncio.subprocess.Process | None = None
        self.url: str | None = None
        self._stdout_tail: deque[str] = deque(maxlen=20)
        self._drain: asyncio.Task[None] | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    @property
    def returncode(self) -> int | None:
        return self.proc.returncode if self.proc else None

    def stderr_tail(self, lines: int = 3) -> str:
        """The last meaningful lines the child logged (its stderr goes to ``log_path``)."""
        try:
            with self.log_path.open("rb") as fh:
                fh.seek(0, os.SEEK_END)
                fh.seek(max(0, fh.tell() - 8192))
                text = fh.read().decode("utf-8", "replace")
        except OSError:
            return ""
        kept = [line.strip() for line in text.splitlines() if line.strip()]
        return " | ".join(kept[-lines:])[-600:]

    def exit_reason(self) -> str:
        tail = self.stderr_tail()
        return describe_exit(self.returncode) + (f"; last log: {tail}" if tail else "")

    async def start(self, timeout_s: float) -> str:
        """Spawn and wait for the URL line; raises ChildStartError with the exit reason otherwise."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as err:
            self.proc = await asyncio.create_subprocess_exec(
                *self.argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=err,
                env=self.env,
                start_new_session=True,
                preexec_fn=die_with_parent,
            )
        log.info("child started", child=self.name, pid=self.proc.pid)
        assert self.proc.stdout is not None
        try:
            async with asyncio.timeout(timeout_s):
                while True:
                    raw = await self.proc.stdout.readline()
                    if not raw:
                        await self.proc.wait()
                        raise ChildStartError(f"{self.name} {self.exit_reason()} before it was ready")
                    line = raw.decode("utf-8", "replace").strip()
                    url = url_from_line(line, self.url_prefix)
                    if url is not None:
                        self.url = url.rstrip("/")
                        break
                    self._stdout_tail.append(line)
        except asyncio.CancelledError:
            self.kill_now()  # cancelled mid-boot (shutdown): never leave the process behind
            raise
        except TimeoutError:
            await self.stop()
            raise ChildStartError(
                f"{self.name} printed no {self.url_prefix} line within {timeout_s:g}s"
            ) from None
        # Keep draining stdout so a chatty child never blocks on a full pipe.
        self._drain = asyncio.create_task(self._drain_stdout())
        log.info("child ready", child=self.name, pid=self.proc.pid, url=self.url)
        return self.url

    async def _drain_stdout(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        while raw := await self.proc.stdout.readline():
            self._stdout_tail.append(raw.decode("utf-8", "replace").rstrip())

    async def wait(self) -> int:
        """Until the process exits (unbounded: callers supervise a long-running server)."""
        assert self.proc is not None
        return await self.proc.wait()

    async def stop(self, grace_s: float = 10.0) -> None:
        """SIGTERM the child's process group, SIGKILL it after ``grace_s``."""
        if self.proc is None:
            return
        proc = self.proc
        await stop_group(
            proc,
            grace_s,
            lambda: log.warning("child ignored SIGTERM, killing", child=self.name, pid=proc.pid),
        )
        if self._drain is not None:
            self._drain.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._drain
        log.info(
            "child stopped", child=self.name, pid=self.proc.pid, exit=describe_exit(self.proc.returncode)
        )

    def kill_now(self) -> None:
        """Synchronous last resort (interpreter exit): SIGKILL the group."""
        if self.proc is not None:
            signal_group(self.proc.pid, signal.SIGKILL)

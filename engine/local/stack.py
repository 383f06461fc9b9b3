"""``EmbeddedStack``: run ``hotloop up`` as a subprocess for the duration of an ``async with``.

    async with EmbeddedStack(tmp_path) as stack:
        mgr = TrainerJobManager(stack.api_key, stack.base_url)

The stack is stopped (SIGTERM, then SIGKILL of its process group) on exit, on error and on
cancellation; the control plane in turn stops its trainer and deployment processes.

A run that started the stack watches it (``exit_reason``) and, if it dies, ``restart``s it on the same
port, with the same key and state directory: the new control plane restores its jobs and deployments
from the state directory and starts their processes again (the old ones died with it), so every URL
and key the run holds stays valid.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from pathlib import Path
from types import TracebackType

import engine
from engine.errors import StuckError
from engine.log import get_logger
from engine.processes import describe_exit

log = get_logger("local.stack")
# The child imports `engine` from this same tree, wherever the caller runs.
_REPO = str(Path(engine.__file__).resolve().parent.parent)
# How a restarted control plane gets its predecessor's key (an environment variable, never argv).
_RESTART_KEY_ENV = "HOTLOOP_STACK_RESTART_KEY"


class EmbeddedStack:
    def __init__(
        self,
        root_dir: str | os.PathLike[str],
        *,
        port: int = 0,
        model: str | None = None,
        startup_timeout_s: float = 60.0,
        child_startup_timeout_s: float = 300.0,
        stop_timeout_s: float = 30.0,
    ) -> None:
        self.root_dir = Path(root_dir)
        self.port = port
        self.model = model
        self.startup_timeout_s = startup_timeout_s
        self.child_startup_timeout_s = child_startup_timeout_s
        self.stop_timeout_s = stop_timeout_s
        self.account_id = "local"
        self._base_url: str | None = None
        self._api_key: str | None = None
        self._proc: asyncio.subprocess.Process | None = None
        self._drain: asyncio.Task[None] | None = None
        self.restarts = 0

    @property
    def base_url(self) -> str:
        if self._base_url is None:
            raise RuntimeError("EmbeddedStack is not started (use `async with`)")
        return self._base_url

    @property
    def api_key(self) -> str:
        if self._api_key is None:
            raise RuntimeError("EmbeddedStack is not started (use `async with`)")
        return self._api_key

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def returncode(self) -> int | None:
        """Exit status of ``hotloop up`` once stopped (0 after a clean SIGTERM shutdown)."""
        return self._proc.returncode if self._proc else None

    async def start(self) -> EmbeddedStack:
        self.root_dir.mkdir(parents=True, exist_ok=True)
        argv = [sys.executable, "-m", "engine.cli", "up", "--port", str(self.port)]
        argv += ["--state-dir", str(self.root_dir), "--startup-timeout", str(self.child_startup_timeout_s)]
        if self.model:
            argv += ["--model", self.model]
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (_REPO, env.get("PYTHONPATH", "")) if p)
        if self._api_key is not None:  # a restart keeps the key every client holds
            argv += ["--api-key-env", _RESTART_KEY_ENV]
            env[_RESTART_KEY_ENV] = self._api_key
        with (self.root_dir / "controlplane.log").open("ab") as err:
            self._proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=err,
                env=env,
                start_new_session=True,
            )
        try:
            await self._read_lines()
            log.info("embedded stack up", base_url=self._base_url, pid=self._proc.pid)
        except BaseException:  # whatever fails after the spawn, the child must not outlive us
            await self.stop()
            raise
        return self

    async def _read_lines(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        try:
            async with asyncio.timeout(self.startup_timeout_s):
                while self._base_url is None or self._api_key is None:
                    raw = await self._proc.stdout.readline()
                    if not raw:
                        code = await self._proc.wait()
                        raise StuckError(
                            f"hotloop up exited with code {code} before printing its URL; "
                            f"see {self.root_dir / 'controlplane.log'}"
                        )
                    key, _, value = raw.decode().strip().partition("=")
                    if key == "HOTLOOP_BASE_URL":
                        self._base_url = value
                    elif key == "HOTLOOP_API_KEY":
                        self._api_key = value
        except TimeoutError:
            raise StuckError(f"hotloop up printed no URL within {self.startup_timeout_s:g}s") from None
        self._drain = asyncio.create_task(self._drain_stdout())

    async def _drain_stdout(self) -> None:
        """Until EOF (unbounded: a full stdout pipe would stall the child); ``stop`` cancels it."""
        assert self._proc is not None and self._proc.stdout is not None
        while await self._proc.stdout.readline():
            pass

    async def stop(self) -> None:
        """SIGTERM (the control plane stops its children), SIGKILL the group after ``stop_timeout_s``."""
        proc = self._proc
        if proc is None:
            return
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                async with asyncio.timeout(self.stop_timeout_s):
                    await proc.wait()
            except TimeoutError:
                log.warning("hotloop up ignored SIGTERM; killing", pid=proc.pid)
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)
                await proc.wait()  # after SIGKILL: the exit is immediate
        if self._drain is not None:
            self._drain.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._drain
        log.info("embedded stack stopped", pid=proc.pid, returncode=proc.returncode)

    def exit_reason(self) -> str | None:
        """None while ``hotloop up`` runs; else how it ended, with the last lines of its log."""
        proc = self._proc
        if proc is None or proc.returncode is None:
            return None
        tail = ""
        try:
            with (self.root_dir / "controlplane.log").open("rb") as fh:
                fh.seek(0, os.SEEK_END)
                fh.seek(max(0, fh.tell() - 2048))
                lines = [ln.strip() for ln in fh.read().decode("utf-8", "replace").splitlines() if ln.strip()]
                tail = " | ".join(lines[-2:])[-400:]
        except OSError:
            pass
        return f"(pid {proc.pid}) {describe_exit(proc.returncode)}" + (f"; last log: {tail}" if tail else "")

    async def restart(self, *, timeout_s: float | None = None) -> None:
        """Stop what is left of the stack and start it again on the same port, key and state dir."""
        await self.stop()
        if self._base_url is not None:
            self.port = int(self._base_url.rsplit(":", 1)[1])
        previous = self._base_url
        self._base_url = None
        self.restarts += 1
        if timeout_s is not None:
            self.startup_timeout_s = min(self.startup_timeout_s, timeout_s)
        await self.start()
        log.info("embedded stack restarted", base_url=self._base_url, was=previous, restarts=self.restarts)

    async def __aenter__(self) -> EmbeddedStack:
        return await self.start()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        # Shielded: a cancelled caller must still tear the stack down, not orphan it.
        stopping = asyncio.ensure_future(self.stop())
        try:
            await asyncio.shield(stopping)
        except asyncio.CancelledError:
            await stopping
            raise

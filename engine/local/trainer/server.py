"""Start and stop the trainer: on the caller's loop (:class:`TrainerServer`) or on a background
thread with its own loop (:func:`serve_in_thread`, for sync callers such as the sync tinker client
in tests and benchmarks)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from aiohttp import web

from engine.local.http_server import make_runner, start_site
from engine.local.trainer.app import build_app
from engine.local.trainer.config import TrainerConfig
from engine.local.trainer.logs import LazyLogger
from engine.local.trainer.service import TrainerService

log = LazyLogger("trainer.server")


def load_service(config: TrainerConfig) -> TrainerService:
    """Blocking: load the base model and tokenizer (once per process)."""
    import torch

    from engine.local.models import load_model, load_tokenizer, resolve_model

    if config.torch_threads:
        torch.set_num_threads(config.torch_threads)

    path = resolve_model(config.model)
    base = load_model(config.model)
    return TrainerService(config, base, path, load_tokenizer(config.model))


class TrainerServer:
    def __init__(self, config: TrainerConfig, service: TrainerService | None = None) -> None:
        self.config = config
        self.service = service
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://{self.config.host}:{self.port}"

    async def start(self) -> str:
        if self.service is None:
            self.service = await asyncio.get_running_loop().run_in_executor(None, load_service, self.config)
        self.config.bucket.mkdir(parents=True, exist_ok=True)
        self.service.state_dir.mkdir(parents=True, exist_ok=True)
        # A stop must not wait out a client's 25 s retrieve_future long-poll.
        self._runner = make_runner(build_app(self.service), shutdown_timeout=2.0)
        await self._runner.setup()
        try:
            self.port = await start_site(self._runner, self.config.host, self.config.port)
        except BaseException:  # e.g. the port is taken: release the runner (and the service's threads)
            await self.stop()
            raise
        log.info("trainer_listening", url=self.url, model=self.config.model, bucket=str(self.config.bucket))
        return self.url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


class ServerThread:
    """A trainer on a daemon thread with its own event loop."""

    def __init__(self, config: TrainerConfig, service: TrainerService | None = None) -> None:
        self.server = TrainerServer(config, service)
        self.loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name="trainer-server", daemon=True)

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def service(self) -> TrainerService:
        assert self.server.service is not None
        return self.server.service

    def _main(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_until_complete(self.server.start())
        except BaseException as exc:
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        self.loop.run_forever()
        self.loop.run_until_complete(self.server.stop())
        self.loop.close()

    def start(self, timeout_s: float = 120.0) -> str:
        self._thread.start()
        if not self._ready.wait(timeout_s):
            raise TimeoutError(f"trainer did not start within {timeout_s}s")
        if self._error is not None:
            raise RuntimeError(f"trainer failed to start: {self._error!r}") from self._error
        return self.url

    def stop(self, timeout_s: float = 30.0) -> None:
        if self.loop.is_running():
            self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout_s)


@contextmanager
def serve_in_thread(config: TrainerConfig, service: TrainerService | None = None) -> Iterator[ServerThread]:
    thread = ServerThread(config, service)
    thread.start()
    try:
        yield thread
    finally:
        thread.stop()

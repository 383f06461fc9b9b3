"""Launch a local server process and wait for its readiness line, ``KEY=http://HOST:PORT`` on stdout
(the line engine.local.launch defines).

``hotloop serve trainer|deployment`` and the load-test mock server announce themselves this way once
listening (``--port 0`` picks a free port, so the line is the only way to learn it). Tests and
benchmarks use ``launched`` / ``alaunched``; the control plane's supervisor parses the same line with
``url_from_line`` but keeps its own process handling (process groups, death signal, stdout drain).

The process's stderr goes to ``log_path`` (or an anonymous temporary file) rather than a pipe: nobody
drains it, and a full pipe would stall the server; its tail is what a start failure reports. Stdout is
not read past the readiness line: the serve commands print nothing else there.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import select
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Generic, Literal, TypeVar

from engine.local.launch import DEPLOYMENT_URL_KEY, TRAINER_URL_KEY, url_from_line
from engine.processes import describe_exit

MOCK_URL_KEY = "HOTLOOP_MOCK_URL"
__all__ = [
    "DEPLOYMENT_URL_KEY",
    "MOCK_URL_KEY",
    "TRAINER_URL_KEY",
    "LaunchError",
    "LaunchedServer",
    "alaunched",
    "aterminate",
    "hotloop_cli",
    "launched",
    "serve_argv",
    "terminate",
    "url_from_line",
]

ProcT = TypeVar("ProcT", subprocess.Popen[bytes], asyncio.subprocess.Process)


class LaunchError(RuntimeError):
    """The process exited, or printed no readiness line in time; the message carries its stderr tail."""


@dataclass(frozen=True)
class LaunchedServer(Generic[ProcT]):
    proc: ProcT
    url: str
    line: str
    """The readiness line as printed (whitespace stripped), for tests of the line's exact format."""
    before: tuple[str, ...] = ()
    """Stdout lines printed before the readiness line (the serve commands print none)."""


def serve_argv(
    kind: Literal["trainer", "deployment"],
    *,
    model: str,
    bucket: str | os.PathLike[str] | None = None,
    port: int = 0,
    extra: Sequence[str] = (),
    python: str = sys.executable,
) -> list[str]:
    """``python -m engine.cli serve KIND --port PORT --model MODEL [--bucket BUCKET] *extra``."""
    argv = [python, "-m", "engine.cli", "serve", kind, "--port", str(port), "--model", model]
    if bucket is not None:
        argv += ["--bucket", os.fspath(bucket)]
    return [*argv, *extra]


def _child_env(extra_env: Mapping[str, str] | None) -> dict[str, str]:
    return {**os.environ, **(extra_env or {})}


def _stderr_file(log_path: Path | None) -> IO[bytes]:
    # w+b: the tail is read back through the same descriptor on failure.
    return open(log_path, "w+b") if log_path is not None else tempfile.TemporaryFile()


def _tail(err: IO[bytes], limit: int = 2000) -> str:
    # pread leaves the shared file offset alone: the child may still be writing through it.
    size = os.fstat(err.fileno()).st_size
    return os.pread(err.fileno(), limit, max(0, size - limit)).decode("utf-8", "replace")


def _start_error(argv: Sequence[str], url_key: str, why: str, err: IO[bytes]) -> LaunchError:
    return LaunchError(f"{shlex.join(argv)} did not print {url_key}=...: {why}; stderr tail:\n{_tail(err)}")


def _wait_for_url(
    proc: subprocess.Popen[bytes], argv: Sequence[str], url_key: str, timeout_s: float, err: IO[bytes]
) -> LaunchedServer[subprocess.Popen[bytes]]:
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    deadline = time.monotonic() + timeout_s
    pending = b""
    before: list[str] = []
    while True:
        # Raw reads under select: a buffered readline could block past the deadline on a silent child.
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
            raise _start_error(argv, url_key, f"none within {timeout_s:g}s", err)
        chunk = os.read(fd, 65536)
        if not chunk:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(5)  # stdout closes just before exit: let the exit status land
            raise _start_error(argv, url_key, describe_exit(proc.poll()), err)
        *lines, pending = (pending + chunk).split(b"\n")
        for raw in lines:
            line = raw.decode("utf-8", "replace").strip()
            url = url_from_line(line, url_key)
            if url is not None:
                return LaunchedServer(proc, url, line, tuple(before))
            before.append(line)


def terminate(proc: subprocess.Popen[bytes], grace_s: float = 15.0) -> None:
    """SIGTERM, then SIGKILL if the process is still there after ``grace_s``."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def launched(
    argv: Sequence[str],
    url_key: str,
    *,
    timeout_s: float,
    extra_env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
    log_path: Path | None = None,
    grace_s: float = 15.0,
) -> Iterator[LaunchedServer[subprocess.Popen[bytes]]]:
    """Start ``argv`` (environment = this process's plus ``extra_env``) and yield it with its URL.

    Raises LaunchError if it exits, or prints no readiness line within ``timeout_s``, first. Always
    stopped on the way out (SIGTERM, SIGKILL after ``grace_s``); a caller may stop it earlier to check
    its exit code.
    """
    with _stderr_file(log_path) as err:
        proc = subprocess.Popen(
            argv,
            bufsize=0,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=err,
            env=_child_env(extra_env),
            cwd=cwd,
        )
        try:
            yield _wait_for_url(proc, argv, url_key, timeout_s, err)
        finally:
            terminate(proc, grace_s)
            if proc.stdout is not None:
                proc.stdout.close()


async def _await_url(
    proc: asyncio.subprocess.Process, argv: Sequence[str], url_key: str, timeout_s: float, err: IO[bytes]
) -> LaunchedServer[asyncio.subprocess.Process]:
    assert proc.stdout is not None
    before: list[str] = []
    try:
        async with asyncio.timeout(timeout_s):
            while raw := await proc.stdout.readline():
                line = raw.decode("utf-8", "replace").strip()
                url = url_from_line(line, url_key)
                if url is not None:
                    return LaunchedServer(proc, url, line, tuple(before))
                before.append(line)
            await proc.wait()
    except TimeoutError:
        raise _start_error(argv, url_key, f"none within {timeout_s:g}s", err) from None
    raise _start_error(argv, url_key, describe_exit(proc.returncode), err)


async def aterminate(proc: asyncio.subprocess.Process, grace_s: float = 15.0) -> None:
    """SIGTERM, then SIGKILL if the process is still there after ``grace_s``."""
    if proc.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.terminate()
    try:
        async with asyncio.timeout(grace_s):
            await proc.wait()
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()  # after SIGKILL: the exit is immediate


@contextlib.asynccontextmanager
async def alaunched(
    argv: Sequence[str],
    url_key: str,
    *,
    timeout_s: float,
    extra_env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
    log_path: Path | None = None,
    grace_s: float = 15.0,
) -> AsyncIterator[LaunchedServer[asyncio.subprocess.Process]]:
    """``launched`` for asyncio callers."""
    with _stderr_file(log_path) as err:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=err,
            env=_child_env(extra_env),
            cwd=cwd,
        )
        try:
            yield await _await_url(proc, argv, url_key, timeout_s, err)
        finally:
            try:
                await aterminate(proc, grace_s)
            except BaseException:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()  # cancelled while stopping: never leave the process behind
                raise


async def hotloop_cli(
    args: Sequence[str], env: Mapping[str, str], timeout_s: float = 420.0, cwd: Path | None = None
) -> tuple[int, str]:
    """``hotloop --log-format json ARGS`` as a user runs it, a subprocess: (exit status, its stdout and
    stderr together). Killed if it outlives ``timeout_s``."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "engine.cli", "--log-format", "json", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, env=dict(env), cwd=cwd,
    )  # fmt: skip
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout_s)
        return proc.returncode or 0, out.decode(errors="replace")
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()

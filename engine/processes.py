"""Child processes hotloop supervises (servers it starts in their own process groups): stopping a
group and describing how a process ended, one definition for the control plane's children, the
vLLM launcher and the embedded stack."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
import sys
from collections.abc import Callable

_PR_SET_PDEATHSIG = 1
# Resolved in the parent: between fork and exec the child may only make the plain prctl call (no
# dlopen, no locks another thread could hold).
_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None


def die_with_parent() -> None:  # pragma: no cover - runs in the forked child before exec
    """``preexec_fn``: the kernel sends the child SIGTERM when its parent dies (Linux), so a server
    never outlives a SIGKILLed supervisor."""
    if _LIBC is not None:
        _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


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


def signal_group(pid: int, sig: int) -> None:
    """Send ``sig`` to the process group led by ``pid`` (gone already: nothing to do)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


async def stop_group(
    proc: asyncio.subprocess.Process, grace_s: float, on_ignored: Callable[[], None] | None = None
) -> None:
    """SIGTERM the process's group, SIGKILL it after ``grace_s``; then SIGKILL what the leader left
    in its group (workers it forked), even when the leader exited on its own."""
    if proc.returncode is None:
        signal_group(proc.pid, signal.SIGTERM)
        try:
            async with asyncio.timeout(grace_s):
                await proc.wait()
        except TimeoutError:
            if on_ignored is not None:
                on_ignored()
            signal_group(proc.pid, signal.SIGKILL)
            await proc.wait()  # after SIGKILL the exit is immediate
    signal_group(proc.pid, signal.SIGKILL)

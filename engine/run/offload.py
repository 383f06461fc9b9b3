"""User code off the event loop: reward functions and chat-template tokenization.

A service that embeds hotloop shares its event loop with the run, so nothing a user wrote may run on
it: a slow reward would stall the host's own requests. Rewards run in a pool chosen in the config
(``user_code.executor``): threads by default (rewards that wait on I/O or release the GIL), or
processes for CPU-heavy pure-Python rewards, which must then be importable module-level functions
(checked when the run starts). Tokenization always runs in a thread: a tokenizer is a live object,
not something to ship to another process.
"""

from __future__ import annotations

import asyncio
import functools
import multiprocessing
import pickle
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from typing import Any, Literal, TypeVar

from engine.errors import ConfigError
from engine.recipes.tasks import Task, score_pairs

T = TypeVar("T")


class UserCode:
    """The pools user code runs in, for the life of one run (``close`` them at its end)."""

    def __init__(
        self, task: Task, executor: Literal["thread", "process"] = "thread", workers: int = 4
    ) -> None:
        self.task = task
        self._threads = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="hotloop-user")
        self._rewards: Executor = self._threads
        if executor == "process":
            try:
                pickle.dumps(task.reward)
            except Exception as exc:
                self._threads.shutdown(wait=False)
                raise ConfigError(
                    f"user_code.executor: 'process' needs a module-level reward function; "
                    f"{task.reward_name} cannot be sent to a worker process ({type(exc).__name__}: {exc})"
                ) from None
            # spawn, not fork: the run's process holds threads (tinker's loop, the journal writer).
            self._rewards = ProcessPoolExecutor(
                max_workers=workers, mp_context=multiprocessing.get_context("spawn")
            )

    async def rewards(self, pairs: Sequence[tuple[str, str]]) -> list[float]:
        """The task's reward of each (prompt, completion), checked finite, computed off the loop."""
        work = functools.partial(score_pairs, self.task.reward, self.task.reward_name, list(pairs))
        return await asyncio.get_running_loop().run_in_executor(self._rewards, work)

    async def in_thread(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` on a worker thread (tokenization and other calls into user-provided objects)."""
        return await asyncio.get_running_loop().run_in_executor(self._threads, functools.partial(fn, *args))

    def close(self) -> None:
        """Stop the pools without waiting for stragglers (a cancelled run must not hang on a reward)."""
        if self._rewards is not self._threads:
            self._rewards.shutdown(wait=False, cancel_futures=True)
        self._threads.shutdown(wait=False, cancel_futures=True)

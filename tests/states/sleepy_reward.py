"""A user reward that blocks for half a second per call (tests/states/test_guest.py). With
``$HOTLOOP_TEST_REWARD_CALLS`` set, each call appends where it ran: pid, thread, and whether an event
loop runs on that thread."""

from __future__ import annotations

import asyncio
import os
import threading
import time

CALLS_ENV = "HOTLOOP_TEST_REWARD_CALLS"


def reward(prompt: str, completion: str) -> float:
    time.sleep(0.5)
    path = os.environ.get(CALLS_ENV)
    if path:
        try:
            asyncio.get_running_loop()
            loop = "loop"
        except RuntimeError:
            loop = "no-loop"
        with open(path, "a") as fh:  # one short line per call: appends from workers do not interleave
            fh.write(f"{os.getpid()} {threading.get_ident()} {loop}\n")
    return float(len(completion) % 2)

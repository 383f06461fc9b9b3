"""A user reward that blocks for half a second per call (tests/states/test_guest.py)."""

from __future__ import annotations

import time


def reward(prompt: str, completion: str) -> float:
    time.sleep(0.5)
    return float(len(completion) % 2)

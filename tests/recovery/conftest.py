"""Recovery from lost parts: the pure policy, whole runs on the fake planes of tests/states (real
states, orchestrator and journal, parts that die and come back), and the fault-injection harness."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "states"))

"""Recovery from lost parts: the pure policy, whole runs on the fake planes of tests/support/fakes.py
(real states, orchestrator and journal, parts that die and come back), and the fault-injection
harness."""

from __future__ import annotations

"""Concurrency control for sampling: a pure AIMD decision core, an admission gate, two controllers."""

from engine.sampling.controllers.aimd import (
    AimdPolicy,
    AimdState,
    Decision,
    Observation,
    adjust,
    complete_step,
    initial_state,
    observe,
    pq_next_window,
)
from engine.sampling.controllers.controllers import (
    AdaptiveConcurrencyController,
    ConcurrencyController,
    FixedConcurrencyController,
    observation_from_metrics,
)
from engine.sampling.controllers.gate import AdmissionGate

__all__ = [
    "AdaptiveConcurrencyController",
    "AdmissionGate",
    "AimdPolicy",
    "AimdState",
    "ConcurrencyController",
    "Decision",
    "FixedConcurrencyController",
    "Observation",
    "adjust",
    "complete_step",
    "initial_state",
    "observation_from_metrics",
    "observe",
    "pq_next_window",
]

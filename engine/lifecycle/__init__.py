"""The lifecycle machine: states, the transition table, the Schedule and the Runner (see each module);
for asynchronous RL, the rollout machine (its table, Schedule, buffer and runner) beside it.

Generic: it knows nothing of configs, recipes, backends or run directories (engine.run builds a run on
top of it; a test reads the imports and fails on an upward one).
"""

from engine.lifecycle.buffer import RolloutBuffer
from engine.lifecycle.events import EventBus, LifecycleEvent, RolloutProgress
from engine.lifecycle.rollout import RolloutSchedule, RolloutView, staleness
from engine.lifecycle.rollout_runner import RolloutFailed, RolloutRunner, RolloutVisit
from engine.lifecycle.runner import (
    Fact,
    FaultPlan,
    LifecycleContext,
    RunFailed,
    Runner,
    StallWatch,
    StateLimits,
)
from engine.lifecycle.schedule import Counters, Schedule
from engine.lifecycle.table import (
    INITIAL,
    ROLLOUT_TRANSITIONS,
    TERMINAL,
    TRANSITIONS,
    WORK_STATES,
    IllegalTransition,
    RolloutState,
    State,
    check_rollout_transition,
    check_transition,
)

__all__ = [
    "INITIAL",
    "ROLLOUT_TRANSITIONS",
    "TERMINAL",
    "TRANSITIONS",
    "WORK_STATES",
    "Counters",
    "EventBus",
    "Fact",
    "FaultPlan",
    "IllegalTransition",
    "LifecycleContext",
    "LifecycleEvent",
    "RolloutBuffer",
    "RolloutFailed",
    "RolloutProgress",
    "RolloutRunner",
    "RolloutSchedule",
    "RolloutState",
    "RolloutView",
    "RolloutVisit",
    "RunFailed",
    "Runner",
    "Schedule",
    "StallWatch",
    "State",
    "StateLimits",
    "check_rollout_transition",
    "check_transition",
    "staleness",
]

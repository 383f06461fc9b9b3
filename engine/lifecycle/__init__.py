"""The lifecycle machine: states, the transition table, the Schedule and the Runner (see each module).

Generic: it knows nothing of configs, recipes, backends or run directories (engine.run builds a run on
top of it; a test reads the imports and fails on an upward one).
"""

from engine.lifecycle.events import EventBus, LifecycleEvent
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
    TERMINAL,
    TRANSITIONS,
    WORK_STATES,
    IllegalTransition,
    State,
    check_transition,
)

__all__ = [
    "INITIAL",
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
    "RunFailed",
    "Runner",
    "Schedule",
    "StallWatch",
    "State",
    "StateLimits",
    "check_transition",
]

"""The lifecycle: states, the transition table, the Schedule and the Runner (see each module)."""

from engine.lifecycle.events import EventBus, LifecycleEvent
from engine.lifecycle.runner import (
    FaultPlan,
    LifecycleContext,
    Progress,
    RunFailed,
    Runner,
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
    "FaultPlan",
    "IllegalTransition",
    "LifecycleContext",
    "LifecycleEvent",
    "Progress",
    "RunFailed",
    "Runner",
    "Schedule",
    "State",
    "StateLimits",
    "check_transition",
]

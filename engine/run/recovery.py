"""The recovery policy: what a run does when one of its parts fails, as a pure decision.

A run is a trainer, a deployment and (for ``control_plane`` planes) a control plane. Each request has
one retry owner (the control-plane REST client, the sampler, tinker's client): a connection reset, a
stalled answer, a truncated stream or a 5xx/429 is retried there first, bounded by that owner's own
policy. This module is consulted when that was not enough: a state failed, or the liveness watch
(engine.run.liveness) saw a part fail while a state ran. ``classify`` reads the failure (typed
errors, never strings); ``decide`` maps it through the literal table ``ACTIONS`` to an action,
bounded by a ``RecoveryBudget`` (a value from the run config's ``recovery`` section):

    failure                     action                  what the orchestrator does
    trainer_failed              reconnect_trainer       trainer.recover (resume the job), new attempt
    trainer_gone                fail                    a deleted job's id cannot be reused
    deployment_failed/_gone     recover_deployment      deployment.recover (re-create), new attempt
    control_plane_down          restart_control_plane   restart the run's own embedded stack
    control_plane_unreachable   retry                   wait (backoff), new attempt
    connection                  retry                   a retry owner gave up: backoff, new attempt
    stalled                     retry                   a state stopped progressing
    unknown                     retry, once             twice in a row without a new step: fail
    unrecoverable               fail                    config, journal, a reward that raised,
                                                        an illegal transition

Every action but ``fail`` ends in a *new attempt* through the resume path: the failed attempt's live
clients are closed, the journal is replayed, and a new generation restores the last committed full
training state into a new model (engine.run.replay). So recovery keeps the resume guarantees: no
step lost, none repeated, no optimizer step applied twice; a deployment that lost its weights serves
its initial ones, which the read-back sees, so the run owes it a full snapshot.

The budget bounds how often this happens: at most ``max_per_hour`` recoveries in any hour, at most
``max_consecutive`` attempts in a row that commit no new step, each recovery action within
``deadline_s``. A failure past the budget fails the run naming its cause; a person's ``hotloop
resume`` starts with a fresh budget.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, ClassVar, Literal

from engine.backends.base import PartLost
from engine.errors import ConfigError, RetryableError, StuckError
from engine.retry import backoff_delay

FailureKind = Literal[
    "trainer_failed",
    "trainer_gone",
    "deployment_failed",
    "deployment_gone",
    "control_plane_down",
    "control_plane_unreachable",
    "connection",
    "stalled",
    "unknown",
    "unrecoverable",
]
Action = Literal["retry", "reconnect_trainer", "recover_deployment", "restart_control_plane", "fail"]

ACTIONS: Mapping[FailureKind, Action] = MappingProxyType(
    {
        "trainer_failed": "reconnect_trainer",
        "trainer_gone": "fail",
        "deployment_failed": "recover_deployment",
        "deployment_gone": "recover_deployment",
        "control_plane_down": "restart_control_plane",
        "control_plane_unreachable": "retry",
        "connection": "retry",
        "stalled": "retry",
        "unknown": "retry",
        "unrecoverable": "fail",
    }
)
"""The policy's table: what failed -> what to do (the budget may still turn it into ``fail``)."""

HOUR_S = 3600.0


@dataclass(frozen=True)
class RecoveryBudget:
    """How much recovery a run may do on its own (the run config's ``recovery`` section)."""

    enabled: bool = True
    max_per_hour: int = 6
    max_consecutive: int = 3
    deadline_s: float = 900.0
    backoff_s: float = 2.0
    max_backoff_s: float = 60.0


@dataclass(frozen=True)
class Failure:
    """What failed, classified; ``cause`` is the error as the run reports it (type and message)."""

    kind: FailureKind
    cause: str
    state: str | None = None
    step: int = 0


@dataclass(frozen=True)
class PastRecovery:
    """One recovery this process decided: when, and whether the attempt that failed had committed
    a step beyond where it started (``progressed``)."""

    at: float
    kind: FailureKind
    progressed: bool


@dataclass(frozen=True)
class Decision:
    """The policy's answer. ``delay_s``: wait this long before acting; ``deadline_s``: the action
    (and the wait for the part to serve again) must finish within it."""

    kind: ClassVar[str] = "recovery"
    action: Action
    failure: Failure
    reason: str
    delay_s: float
    deadline_s: float
    recoveries_last_hour: int
    consecutive: int

    def to_json(self) -> dict[str, Any]:
        """The journal's ``recovery`` record (the run report marks it on its timeline)."""
        return {
            "kind": self.kind,
            "failure": self.failure.kind,
            "action": self.action,
            "state": self.failure.state,
            "step": self.failure.step,
            "cause": self.failure.cause,
            "reason": self.reason,
            "delay_s": round(self.delay_s, 3),
            "deadline_s": self.deadline_s,
            "recoveries_last_hour": self.recoveries_last_hour,
            "consecutive": self.consecutive,
        }


def _consecutive(history: Sequence[PastRecovery], progressed: bool) -> int:
    """Attempts in a row, this one included, that committed no new step."""
    if progressed:
        return 0
    count = 1
    for past in reversed(history):
        if past.progressed:
            break
        count += 1
    return count


def decide(
    failure: Failure,
    history: Sequence[PastRecovery],
    *,
    now: float,
    progressed: bool,
    budget: RecoveryBudget,
    supervised_control_plane: bool = False,
) -> Decision:
    """What to do about ``failure`` given the recoveries already made (``history``, oldest first).

    ``progressed``: the failed attempt committed a step beyond where it started.
    ``supervised_control_plane``: the run started its control plane itself and may restart it.
    """
    recent = sum(1 for past in history if now - past.at < HOUR_S)
    consecutive = _consecutive(history, progressed)
    action = ACTIONS[failure.kind]
    if action == "restart_control_plane" and not supervised_control_plane:
        action = "retry"  # someone else's control plane: wait for it to answer again

    def answer(action: Action, reason: str, delay_s: float = 0.0) -> Decision:
        return Decision(action, failure, reason, delay_s, budget.deadline_s, recent, consecutive)

    if action == "fail":
        return answer("fail", f"not recoverable ({failure.kind})")
    if not budget.enabled:
        return answer("fail", "recovery is off (recovery.enabled: false)")
    if recent >= budget.max_per_hour:
        return answer(
            "fail",
            f"recovery budget exhausted: {recent} recoveries in the last hour "
            f"(recovery.max_per_hour: {budget.max_per_hour})",
        )
    if consecutive >= budget.max_consecutive:
        return answer(
            "fail",
            f"recovery budget exhausted: {consecutive} attempts in a row committed no step "
            f"(recovery.max_consecutive: {budget.max_consecutive})",
        )
    if failure.kind == "unknown" and consecutive > 1:
        # An error of no known kind is retried once (a request its client repeated after a lost answer,
        # say); the same again before any step is committed is taken to be deterministic.
        return answer("fail", "an unclassified error again, and no step committed since: not retried")
    delay = 0.0
    if action == "retry":
        delay = backoff_delay(
            max(1, consecutive),
            initial_s=budget.backoff_s,
            multiplier=2.0,
            max_s=budget.max_backoff_s,
            jitter=1.0,  # a pure decision: no randomness (one run, nothing to de-synchronise)
            retry_after_s=None,
            max_retry_after_s=0.0,
        )
    return answer(action, f"{failure.kind}: {action}", delay)


# ---- classification (from typed errors) ----------------------------------------------------------

_PART_KINDS: Mapping[tuple[str, str], FailureKind] = MappingProxyType(
    {
        ("trainer", "failed"): "trainer_failed",
        ("trainer", "gone"): "trainer_gone",
        ("deployment", "failed"): "deployment_failed",
        ("deployment", "gone"): "deployment_gone",
        ("control_plane", "failed"): "control_plane_down",
        ("control_plane", "gone"): "control_plane_down",
    }
)


def _chain(exc: BaseException) -> list[BaseException]:
    out: list[BaseException] = []
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        out.append(current)
        current = current.__cause__ or (None if current.__suppress_context__ else current.__context__)
    return out


def _unrecoverable(exc: BaseException) -> bool:
    # Imported here: the journal and lifecycle modules are not needed to read the table.
    from engine.journal import JournalCorrupt
    from engine.lifecycle.table import IllegalTransition
    from engine.recipes.tasks import RewardError
    from engine.run.records import JournalCorruptFact

    fatal = (ConfigError, JournalCorrupt, JournalCorruptFact, IllegalTransition, RewardError)
    return isinstance(exc, fatal)


def failure_kind(exc: BaseException) -> FailureKind:
    """The kind of a failure, from the error and its causes (the most specific one wins)."""
    from engine.lifecycle.runner import RunFailed
    from engine.sampling.errors import SamplingExhaustedError

    chain = _chain(exc)
    for err in chain:
        if isinstance(err, PartLost):
            if err.status == "unreachable":
                return "control_plane_unreachable"
            return _PART_KINDS.get((err.part, err.status), "unknown")
    if any(_unrecoverable(err) for err in chain):
        return "unrecoverable"
    for err in chain:
        if isinstance(err, RunFailed):
            continue
        if isinstance(err, RetryableError | SamplingExhaustedError):
            return "connection"
        if isinstance(err, StuckError):
            return "stalled"
    return "unknown"


def classify(exc: BaseException, *, state: str | None = None, step: int = 0) -> Failure:
    """The ``Failure`` a run's error stands for; ``cause`` is the innermost error's type and message."""
    from engine.lifecycle.runner import RunFailed

    inner = exc.__cause__ if isinstance(exc, RunFailed) and exc.__cause__ is not None else exc
    if isinstance(exc, RunFailed):
        state, step = exc.state.value, exc.step
    return Failure(failure_kind(exc), f"{type(inner).__name__}: {inner}", state, step)

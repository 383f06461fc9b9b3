"""Between two attempts of a run: journal the recovery policy's decision, publish it, and carry out
its action through the backends seam (engine.run.recovery decides; this module does the I/O).

The orchestrator runs a run as a sequence of attempts (generations). When an attempt fails,
``Recoverer.decide`` classifies the failure -- one health round first, so a state that failed with
a symptom (a refused connection, a 503) is attributed to the part that was really lost -- asks the
policy, journals ``{"event": "recovery", ...}`` (the run report marks it on its timeline), logs one
line and publishes a ``recovery`` lifecycle event. ``Recoverer.act`` then waits the decision's delay
and does its action within its deadline: resume the trainer, re-create the deployment, or restart the
run's embedded control plane. An action that fails is a failure like any other: decided again,
within the same budget.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from engine.backends.base import DeploymentRef, PartLost, Planes, TrainerRef
from engine.errors import FatalError
from engine.journal import Record
from engine.lifecycle.events import EventBus, LifecycleEvent
from engine.lifecycle.runner import JournalLike, RunFailed
from engine.lifecycle.table import State
from engine.log import get_logger
from engine.run.recovery import Decision, Failure, PastRecovery, RecoveryBudget, classify, decide

log = get_logger("engine.run.recovery")


def state_named(name: str | None) -> State:
    """The lifecycle state a failure names (FAILED when it names none)."""
    return next((s for s in State if s.value == name), State.FAILED)


class RecoveryFailed(RunFailed):
    """The run failed and the recovery policy would not (or could not) heal it; the message names
    the failure's cause and why it was not recovered."""

    def __init__(self, decision: Decision) -> None:
        failure = decision.failure
        where = f" in state {failure.state.upper()}" if failure.state else ""
        message = f"run failed{where} at step {failure.step}: {failure.cause}"
        FatalError.__init__(self, f"{message} (not recovered: {decision.reason})")
        self.state = state_named(failure.state)
        self.step = failure.step
        self.decision = decision


class EventRelay:
    """The bus an attempt's machines publish on: everything goes to the run's bus, except the
    terminal ``failed`` event of a failure the run may still recover from (held until it gives up)."""

    def __init__(self, bus: EventBus) -> None:
        self.bus = bus
        self.attempt = EventBus()
        self.held: LifecycleEvent | None = None
        self.attempt.add_callback(self._forward)

    def _forward(self, event: LifecycleEvent) -> None:
        if event.kind == "failed":
            self.held = event
        else:
            self.bus.publish(event)

    def give_up(self) -> None:
        if self.held is not None:
            self.bus.publish(self.held)
            self.held = None


@dataclass
class AttemptEnd:
    """What the orchestrator knows of a failed attempt."""

    error: BaseException
    trainer: TrainerRef | None
    deployment: DeploymentRef | None
    progressed: bool
    generation: int


class Recoverer:
    def __init__(
        self,
        planes: Planes,
        journal: JournalLike,
        bus: EventBus,
        budget: RecoveryBudget,
        *,
        run_id: str,
    ) -> None:
        self.planes = planes
        self.journal = journal
        self.bus = bus
        self.budget = budget
        self.run_id = run_id
        self.history: list[PastRecovery] = []

    async def _refine(self, failure: Failure, end: AttemptEnd) -> Failure:
        """A failure of no part-specific kind may be the symptom of a lost part: ask once."""
        if failure.kind not in ("connection", "stalled", "unknown"):
            return failure
        from engine.run.liveness import LivenessLimits, LivenessWatch

        watch = LivenessWatch(
            self.planes, lambda: (end.trainer, end.deployment), LivenessLimits(unreachable_after_s=0.0)
        )
        try:
            await watch.check(State.TRAINING)  # any work state: ask every part
        except PartLost as lost:
            refined = classify(lost, state=failure.state, step=failure.step)
            return Failure(refined.kind, f"{refined.cause} (the state failed with {failure.cause})",
                           failure.state, failure.step)  # fmt: skip
        except Exception as exc:  # a health round is advice: it never adds a failure of its own
            log.info("health round after a failure failed", error=f"{type(exc).__name__}: {exc}")
        return failure

    async def decide(self, end: AttemptEnd) -> Decision:
        failure = classify(end.error)
        if isinstance(end.error, RunFailed) or not isinstance(end.error, PartLost):
            failure = await self._refine(failure, end)
        decision = decide(
            failure,
            self.history,
            now=time.monotonic(),
            progressed=end.progressed,
            budget=self.budget,
            supervised_control_plane=self.planes.control_plane is not None,
        )
        if decision.action != "fail":
            self.history.append(PastRecovery(time.monotonic(), failure.kind, end.progressed))
        if not self.journaled(decision):
            return decision
        record: Record = {"event": "recovery", "generation": end.generation, **decision.to_json()}
        await self.journal.append(record)
        level = log.error if decision.action == "fail" else log.warning
        level(
            "recovery decided",
            failure=failure.kind,
            action=decision.action,
            state=failure.state,
            step=failure.step,
            cause=failure.cause,
            reason=decision.reason,
            recoveries_last_hour=decision.recoveries_last_hour,
        )
        self.bus.publish(
            LifecycleEvent(
                "recovery", state_named(failure.state), failure.step, self.run_id,
                record=decision, error=failure.cause,
            )
        )  # fmt: skip
        return decision

    def journaled(self, decision: Decision) -> bool:
        """Whether the policy really decided: an unrecoverable error, or any error with recovery off,
        is the run's plain failure (no recovery record, the error raised as it is)."""
        return self.budget.enabled and decision.failure.kind != "unrecoverable"

    async def act(self, decision: Decision, end: AttemptEnd) -> None:
        """Carry out ``decision`` (never ``fail``) within its deadline; raises what went wrong."""
        if decision.delay_s > 0:
            await asyncio.sleep(decision.delay_s)
        started = time.monotonic()
        async with asyncio.timeout(decision.deadline_s):
            if decision.action == "reconnect_trainer" and end.trainer is not None:
                await self.planes.trainer.recover(end.trainer, timeout_s=decision.deadline_s)
            elif decision.action == "recover_deployment" and end.deployment is not None:
                if end.trainer is not None:
                    await self.planes.deployment.recover(
                        end.deployment, end.trainer, timeout_s=decision.deadline_s
                    )
            elif decision.action == "restart_control_plane" and self.planes.control_plane is not None:
                await self.planes.control_plane.restart(timeout_s=decision.deadline_s)
        log.info("recovery action done", action=decision.action, seconds=round(time.monotonic() - started, 3))

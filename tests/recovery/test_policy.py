"""The recovery policy as a pure decision (engine.run.recovery): the table, the budget, the
classification of typed errors, and the liveness verdict -- no I/O."""

from __future__ import annotations

import pytest

from engine.backends.base import Health, PartLost
from engine.backends.fireworks.config import DeploymentInfo
from engine.backends.fireworks.errors import (
    DeploymentFailedError,
    RetriesExhaustedError,
    TrainerJobFailedError,
)
from engine.backends.fireworks.health import deployment_health_of, job_health_of
from engine.errors import ConfigError, FatalError, StuckError
from engine.lifecycle.runner import RunFailed
from engine.lifecycle.table import IllegalTransition, State
from engine.recipes.tasks import RewardError
from engine.run.liveness import LivenessLimits, verdict
from engine.run.recovery import (
    ACTIONS,
    Failure,
    PastRecovery,
    RecoveryBudget,
    classify,
    decide,
    failure_kind,
)
from engine.sampling.errors import SamplingExhaustedError
from engine.weights.syncer import HotloadFailedError

BUDGET = RecoveryBudget(max_per_hour=3, max_consecutive=3, backoff_s=2.0, max_backoff_s=5.0)


def failed(kind: str) -> Failure:
    return Failure(kind, f"cause of {kind}", "training", 4)  # type: ignore[arg-type]


def test_the_table_maps_every_failure_to_an_action() -> None:
    assert ACTIONS["trainer_failed"] == "reconnect_trainer"
    assert ACTIONS["deployment_failed"] == ACTIONS["deployment_gone"] == "recover_deployment"
    assert ACTIONS["control_plane_down"] == "restart_control_plane"
    assert ACTIONS["trainer_gone"] == ACTIONS["unrecoverable"] == "fail"
    for kind in ("connection", "stalled", "control_plane_unreachable", "unknown"):
        assert ACTIONS[kind] == "retry"  # type: ignore[index]


@pytest.mark.parametrize("kind", sorted(ACTIONS))
def test_a_first_failure_after_progress_gets_the_tables_action(kind: str) -> None:
    d = decide(failed(kind), [], now=0.0, progressed=True, budget=BUDGET, supervised_control_plane=True)
    assert d.action == ACTIONS[kind]  # type: ignore[index]
    assert d.recoveries_last_hour == 0 and d.consecutive == 0 and d.deadline_s == BUDGET.deadline_s


def test_someone_elses_control_plane_is_waited_for_not_restarted() -> None:
    d = decide(failed("control_plane_down"), [], now=0.0, progressed=True, budget=BUDGET)
    assert d.action == "retry" and d.delay_s == BUDGET.backoff_s


def test_the_hourly_budget_fails_the_run_naming_it() -> None:
    history = [PastRecovery(t, "trainer_failed", True) for t in (10.0, 20.0, 30.0)]
    d = decide(failed("trainer_failed"), history, now=40.0, progressed=True, budget=BUDGET)
    assert d.action == "fail" and "3 recoveries in the last hour (recovery.max_per_hour: 3)" in d.reason
    later = decide(failed("trainer_failed"), history, now=10.0 + 3600.5, progressed=True, budget=BUDGET)
    assert later.action == "reconnect_trainer" and later.recoveries_last_hour == 2  # the first aged out


def test_attempts_that_commit_nothing_run_out_and_back_off() -> None:
    one = decide(failed("connection"), [], now=0.0, progressed=False, budget=BUDGET)
    assert one.action == "retry" and one.consecutive == 1 and one.delay_s == 2.0
    history = [PastRecovery(0.0, "connection", False)]
    two = decide(failed("connection"), history, now=1.0, progressed=False, budget=BUDGET)
    assert two.action == "retry" and two.consecutive == 2 and two.delay_s == 4.0
    history.append(PastRecovery(1.0, "connection", False))
    three = decide(failed("connection"), history, now=2.0, progressed=False, budget=BUDGET)
    assert three.action == "fail" and "3 attempts in a row committed no step" in three.reason
    # progress in between resets the count
    history.append(PastRecovery(3.0, "connection", True))
    assert decide(failed("stalled"), history, now=4.0, progressed=False, budget=BUDGET).consecutive == 1


def test_an_unknown_error_is_retried_once_in_a_row() -> None:
    assert decide(failed("unknown"), [], now=0.0, progressed=True, budget=BUDGET).action == "retry"
    assert decide(failed("unknown"), [], now=0.0, progressed=False, budget=BUDGET).action == "retry"
    history = [PastRecovery(0.0, "unknown", False)]
    again = decide(failed("unknown"), history, now=1.0, progressed=False, budget=BUDGET)
    assert again.action == "fail" and "not retried" in again.reason


def test_recovery_off_fails_every_failure() -> None:
    off = RecoveryBudget(enabled=False)
    d = decide(failed("trainer_failed"), [], now=0.0, progressed=True, budget=off)
    assert d.action == "fail" and "recovery.enabled: false" in d.reason


def test_the_decision_is_a_journal_record_of_kind_recovery() -> None:
    d = decide(failed("deployment_failed"), [], now=0.0, progressed=True, budget=BUDGET)
    record = d.to_json()
    assert record["kind"] == "recovery" and record["action"] == "recover_deployment"
    assert record["cause"] == "cause of deployment_failed" and record["state"] == "training"


def test_errors_classify_by_type_through_their_causes() -> None:
    lost = PartLost("trainer", "failed", "trainer job 'x' is FAILED: killed")
    wrapped = RunFailed(State.CHECKPOINTING, 7, lost)
    wrapped.__cause__ = lost
    f = classify(wrapped)
    assert f.kind == "trainer_failed" and f.state == "checkpointing" and f.step == 7
    assert f.cause == "PartLost: trainer job 'x' is FAILED: killed"
    assert failure_kind(PartLost("trainer", "gone", "deleted")) == "trainer_gone"
    assert failure_kind(PartLost("deployment", "failed", "x")) == "deployment_failed"
    assert failure_kind(PartLost("control_plane", "failed", "x")) == "control_plane_down"
    assert failure_kind(PartLost("deployment", "unreachable", "x")) == "control_plane_unreachable"
    # the control-plane adapter's own wait errors are lost parts too
    job = TrainerJobFailedError("trainer job 'x' failed: killed", job_id="x", state="JOB_STATE_FAILED")
    assert failure_kind(job) == "trainer_failed"
    deleted = TrainerJobFailedError("deleted", job_id="x", state="JOB_STATE_DELETED")
    assert failure_kind(deleted) == "trainer_gone"
    missing = DeploymentFailedError("gone", deployment_id="d", state="MISSING")
    assert failure_kind(missing) == "deployment_gone"
    exhausted = RetriesExhaustedError("HTTP 503 (gave up after 8 attempts)", attempts=8, last_status=503)
    hotload = HotloadFailedError("hot-load failed", identity="s")
    hotload.__cause__ = exhausted
    assert failure_kind(hotload) == "connection"  # the hot-load's cause decides
    sampling = SamplingExhaustedError(
        request_id="r", attempts=7, last_kind="http_status", last_status=503, last_message="busy", model="m"
    )
    assert failure_kind(sampling) == "connection"
    assert failure_kind(StuckError("no result")) == "stalled"
    assert failure_kind(FatalError("odd")) == "unknown"
    for fatal in (
        ConfigError("x: bad"),
        RewardError("reward raised"),
        IllegalTransition(State.TRAINING, State.DONE),
    ):
        assert failure_kind(fatal) == "unrecoverable"


def test_the_liveness_verdict_reports_losses_and_tolerates_short_outages() -> None:
    limits = LivenessLimits(unreachable_after_s=10.0)
    lost, _ = verdict("trainer", Health("failed", "trainer job 'x' is FAILED: killed"), None, 0.0, limits)
    assert isinstance(lost, PartLost) and str(lost) == "trainer job 'x' is FAILED: killed"
    down = Health("unreachable", "no answer")
    lost, since = verdict("deployment", down, None, 5.0, limits)
    assert lost is None and since == 5.0
    lost, since = verdict("deployment", Health("ok"), since, 6.0, limits)
    assert lost is None and since is None  # an answer ends the streak
    lost, since = verdict("deployment", down, 5.0, 15.0, limits)
    assert isinstance(lost, PartLost) and lost.status == "unreachable" and "no answer (for 10s)" in str(lost)


def test_control_plane_records_read_as_health() -> None:
    failed_job = {"state": "JOB_STATE_FAILED", "status": {"message": "trainer process killed by SIGKILL"}}
    h = job_health_of("run-trainer", failed_job)
    assert h.status == "failed"
    assert h.detail == "trainer job 'run-trainer' is FAILED: trainer process killed by SIGKILL"
    assert job_health_of("j", {"state": "JOB_STATE_RUNNING"}).status == "ok"
    assert job_health_of("j", {"state": "JOB_STATE_CREATING"}).status == "starting"
    assert job_health_of("j", {"state": "JOB_STATE_DELETED"}).status == "gone"
    assert job_health_of("j", None).status == "gone"
    bad = DeploymentInfo.from_json({"name": "a/d", "state": "FAILED", "status": {"message": "exited"}})
    assert deployment_health_of("d", bad) == Health("failed", "deployment 'd' is FAILED: exited")
    ready = DeploymentInfo.from_json({"name": "a/d", "state": "READY"})
    assert deployment_health_of("d", ready).status == "ok"
    assert deployment_health_of("d", None).status == "gone"

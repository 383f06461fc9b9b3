"""Replay of a run journal: what a resumed run restores, and which rows it keeps."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from engine.journal import Journal, read_journal
from engine.run.replay import replay
from engine.run.rundir import RunDir


def exit_(state: str, *records: dict[str, Any]) -> dict[str, Any]:
    return {"event": "exit", "state": state, "next": "x", "records": list(records)}


def step(n: int) -> dict[str, Any]:
    return {"kind": "step", "row": {"kind": "step", "step": n, "optimizer_steps": n}}


def state(n: int, gen: int = 1) -> dict[str, Any]:
    return {"kind": "state", "step": n, "path": f"tinker://m/weights/state-{n}-g{gen}", "optimizer_steps": n}


def evaluation(n: int) -> dict[str, Any]:
    return {"kind": "eval", "row": {"kind": "eval", "step": n, "score": 0.5}}


RES = {"kind": "resources", "job_id": "j", "job_name": "accounts/a/rlorTrainerJobs/j", "deployment_id": "d"}


def test_fresh_journal_starts_at_zero() -> None:
    r = replay([])
    assert (r.step, r.state_path, r.generation, r.started, r.finished) == (0, None, 0, False, False)


def test_resume_from_last_full_state_drops_later_rows() -> None:
    records = [
        {"event": "start", "generation": 1, "resume_from": None},
        exit_("requesting", RES),
        exit_("evaluating", evaluation(0)),
        exit_("training", step(1)),
        exit_("training", step(2)),
        exit_("checkpointing", state(2), {"kind": "snapshot", "step": 2, "identity": "s2"}),
        exit_("syncing", {"kind": "sync", "step": 2, "identity": "s2"}),
        exit_("evaluating", evaluation(2)),
        exit_("training", step(3)),  # no full state after step 3: redone on resume
        {"event": "enter", "state": "checkpointing", "step": 3},
    ]
    r = replay(records)
    assert r.started and not r.finished and r.generation == 1
    assert (r.step, r.state_path, r.optimizer_steps) == (2, "tinker://m/weights/state-2-g1", 2)
    assert [(row["kind"], row["step"]) for row in r.rows] == [
        ("eval", 0),
        ("step", 1),
        ("step", 2),
        ("eval", 2),
    ]
    assert r.evaluated_step == 2
    assert (r.synced_known, r.synced_identity) == (True, "s2")
    # RES is in hotloop 0.1's shape: old run directories still resume.
    assert r.resources is not None
    assert r.resources.trainer.resource_id == "j" and r.resources.deployment.resource_id == "d"
    assert r.resources.trainer.attrs["job_name"] == "accounts/a/rlorTrainerJobs/j"


def test_a_resumed_attempt_replaces_the_dead_attempts_rows() -> None:
    records = [
        {"event": "start", "generation": 1, "resume_from": None},
        exit_("requesting", RES),
        exit_("training", step(1)),
        exit_("checkpointing", state(1)),
        exit_("training", step(2)),  # the dead attempt's step 2
        {"event": "start", "generation": 2, "resume_from": 1},
        exit_("training", {"kind": "step", "row": {"kind": "step", "step": 2, "attempt": 2}}),
        exit_("checkpointing", state(2, gen=2)),
        exit_("training", step(3)),
    ]
    r = replay(records)
    assert r.generation == 2 and r.step == 2 and r.state_path.endswith("g2")
    assert [row["step"] for row in r.rows] == [1, 2]
    assert r.rows[1].get("attempt") == 2
    assert not r.synced_known  # no sync committed at step 2: the deployment must be re-verified
    assert r.resources is not None and r.resources.trainer.resource_id == "j"


def test_done_and_failure_are_reported() -> None:
    failed = replay(
        [{"event": "start", "generation": 1}, {"event": "exit", "next": "failed", "error": "boom"}]
    )
    assert failed.last_error == "boom" and not failed.finished
    done = replay([{"event": "start", "generation": 1}, {"event": "done", "step": 0}])
    assert done.finished


def test_rundir_rebuilds_derived_files_from_the_journal(tmp_path: Path) -> None:
    rd = RunDir(tmp_path / "run")
    rd.path.mkdir()
    with Journal(rd.journal_path) as j:
        j.append_sync({"event": "start", "generation": 1, "resume_from": None})
        j.append_sync(exit_("training", step(1)))
        j.append_sync(exit_("checkpointing", state(1)))
        j.append_sync(exit_("training", step(2)))
    # metrics.jsonl lagging (crash between journal and metrics write) and leading (uncommitted row)
    rd.append("metrics.jsonl", [{"kind": "step", "step": 2}, {"kind": "step", "step": 9}])
    state_ = rd.replay()
    rd.rebuild_derived(state_)
    assert [r["step"] for r in rd.read_rows()] == [1]
    assert [r["kind"] for r in rd.read_rows("checkpoints.jsonl")] == ["state"]
    assert len(read_journal(rd.journal_path)) == 4

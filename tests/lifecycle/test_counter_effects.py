"""Each state's effect on the counters, pinned to literal values: the simulation tests in
test_lifecycle_table.py apply these same methods, so they alone could not notice one drifting."""

from __future__ import annotations

import pytest

from engine.lifecycle import Counters, Schedule

AT_5 = Counters(step=5, state_step=4, snapshot_step=4, synced_step=4, evaluated_step=2, rollout_step=-1)


def test_each_work_state_moves_exactly_its_counters() -> None:
    assert AT_5.sampled() == Counters(5, 4, 4, 4, 2, rollout_step=6)
    assert AT_5.trained() == Counters(6, 4, 4, 4, 2, -1)
    assert AT_5.checkpointed(state=True, snapshot=False) == Counters(5, 5, 4, 4, 2, -1)
    assert AT_5.checkpointed(state=False, snapshot=True) == Counters(5, 4, 5, 4, 2, -1)
    assert AT_5.checkpointed(state=True, snapshot=True) == Counters(5, 5, 5, 4, 2, -1)
    forced = AT_5.replace(snapshot_step=5, force_sync=True)
    assert forced.synced() == Counters(5, 4, 5, 5, 2, -1, force_sync=False)
    assert AT_5.evaluated() == Counters(5, 4, 4, 4, 5, -1)


@pytest.mark.parametrize(
    ("step", "evaluated", "serves", "expected"),
    [
        (0, -1, True, Counters(0, 0, -1, 0, -1, -1, force_sync=False)),  # a fresh run
        # resumed from the state of step 4, evaluations up to 6 committed by the lost attempt,
        # deployment verified on step 4's snapshot: nothing owed but what comes after step 4
        (4, 6, True, Counters(4, 4, -1, 4, 4, -1, force_sync=False)),
        # the deployment serves something else (re-created, or never verified): a sync is owed
        (4, 2, False, Counters(4, 4, -1, -1, 2, -1, force_sync=True)),
    ],
)
def test_restored_counters(step: int, evaluated: int, serves: bool, expected: Counters) -> None:
    assert Counters.restored(step, evaluated, serves) == expected


def test_what_checkpointing_saves() -> None:
    s = Schedule(max_steps=10, sync_every=2, checkpoint_every=3)
    at = Counters(step=6, state_step=3, snapshot_step=4, synced_step=4)
    assert s.saves_due(at) == (True, True)  # step 6: a state (every 3) and a snapshot (every 2)
    assert s.saves_due(at.replace(step=5)) == (False, False)  # 5: neither; the sync of 4 holds
    assert s.saves_due(at.replace(step=3, state_step=0, snapshot_step=2, synced_step=2)) == (True, False)
    assert s.saves_due(at.replace(step=4, snapshot_step=4)) == (False, False)  # 4's snapshot exists
    assert s.saves_due(at.replace(step=10, state_step=9, snapshot_step=8, synced_step=8)) == (True, True)

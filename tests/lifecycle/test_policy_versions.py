"""Which policy generated a completion (engine.run.versions): by the identity it names, or by the
drain epoch it ran in; anything the run cannot vouch for is refused."""

from __future__ import annotations

import pytest

from engine.run.versions import PolicyVersions, UnknownPolicy


def test_identities_resolve_to_the_step_of_their_snapshot() -> None:
    v = PolicyVersions.from_ledger(
        [
            {"kind": "state", "step": 1, "path": "p"},
            {"kind": "snapshot", "step": 1, "identity": "step-1-a"},
            {"kind": "sync", "step": 1, "identity": "step-1-a"},
        ]
    )
    v.snapshot("step-2-a", 2)
    assert v.resolve("step-1-a", 0, per_completion=True) == ("step-1-a", 1)
    assert v.resolve("step-2-a", 7, per_completion=True) == ("step-2-a", 2)  # epochs do not matter
    assert v.resolve(None, 0, per_completion=True) == (None, 0)  # the untouched base model
    with pytest.raises(UnknownPolicy, match="'someone-elses', which this run did not write"):
        v.resolve("someone-elses", 0, per_completion=True)
    with pytest.raises(Exception, match="recorded for steps 2 and 3"):
        v.snapshot("step-2-a", 3)


def test_without_per_completion_identity_the_epoch_decides() -> None:
    v = PolicyVersions()
    v.snapshot("step-1-a", 1)
    v.serves(0, None)  # WAITING read back the base weights
    v.serves(1, "step-1-a")  # the first drain's hot-load was verified
    assert v.resolve(None, 0, per_completion=False) == (None, 0)
    assert v.resolve(None, 1, per_completion=False) == ("step-1-a", 1)
    assert v.resolve("step-1-a", 1, per_completion=False) == ("step-1-a", 1)
    with pytest.raises(UnknownPolicy, match="drain epoch 2, for which no served identity"):
        v.resolve(None, 2, per_completion=False)
    with pytest.raises(UnknownPolicy, match="names snapshot 'step-1-a', but None was verified"):
        v.resolve("step-1-a", 0, per_completion=False)

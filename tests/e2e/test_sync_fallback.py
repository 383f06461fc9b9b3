"""A hot-load the real deployment refuses makes WeightSyncer fall back: it reads back what the
deployment holds and the next snapshot is a full one, which then loads."""

from __future__ import annotations

from typing import Any

import pytest
from e2e_support import MODEL, served_identity, train_steps

from engine.backends.tinker import TrainingSession
from engine.local.models import load_tokenizer
from engine.weights import HotloadFailedError, WeightSyncer

pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="session")]


async def test_refused_delta_falls_back_to_base(stack: Any, seed_env: Any) -> None:
    b = seed_env
    dep = "seed-serving"
    session = await TrainingSession.connect(
        b.endpoint.base_url, stack.api_key, MODEL, tokenizer_loader=load_tokenizer
    )
    try:
        syncer = WeightSyncer(session, b.deploy_mgr, dep, MODEL, hotload_timeout_s=120, poll_interval_s=0.2)
        first = await syncer.save_and_hotload("fb-0")
        await train_steps(session, session.tokenizer, steps=1)
        second = await syncer.save_and_hotload("fb-1")
        assert syncer.last_snapshot is not None and syncer.last_snapshot.checkpoint_type == "delta"

        # Someone else moves the deployment back to the base snapshot behind the syncer's back ...
        assert await b.deploy_mgr.hotload_and_wait(dep, MODEL, first, timeout_seconds=120, poll_interval=0.2)
        await train_steps(session, session.tokenizer, steps=1, first=1)
        # ... so the delta taken against fb-1 is refused by the deployment.
        with pytest.raises(HotloadFailedError, match="fb-2"):
            await syncer.save_and_hotload("fb-2")
        assert syncer.deployed_identity == first  # read back after the failure
        assert served_identity(await b.deploy_mgr.hotload_check_status(dep, MODEL)) == first

        third = await syncer.save_and_hotload("fb-3")
        assert syncer.last_snapshot.checkpoint_type == "base"
        assert served_identity(await b.deploy_mgr.hotload_check_status(dep, MODEL)) == third
        assert second != third
    finally:
        await session.close()

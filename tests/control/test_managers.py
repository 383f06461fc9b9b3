"""Manager wait/retry logic against a scripted Fireworks-shaped server, with a fake clock."""

from __future__ import annotations

import pytest

from engine.backends.fireworks import (
    AuthenticationError,
    ControlPlaneError,
    DeploymentConfig,
    DeploymentFailedError,
    DeploymentManager,
    HotloadError,
    NotFoundError,
    RestRetryPolicy,
    RetriesExhaustedError,
    TrainerJobConfig,
    TrainerJobFailedError,
    TrainerJobManager,
)
from engine.errors import ConfigError, StuckError

from .conftest import KEY, FakeClock, Script, ScriptedServer


def trainer_mgr(server: ScriptedServer, clock: FakeClock, **kw: object) -> TrainerJobManager:
    return TrainerJobManager(KEY, server.url, clock=clock, **kw)  # type: ignore[arg-type]


def deploy_mgr(server: ScriptedServer, clock: FakeClock, **kw: object) -> DeploymentManager:
    return DeploymentManager(KEY, server.url, clock=clock, **kw)  # type: ignore[arg-type]


async def run_bootstrap(server: ScriptedServer, clock: FakeClock) -> tuple[object, ...]:
    async with trainer_mgr(server, clock) as mgr:
        created = await mgr.create(TrainerJobConfig(base_model="tiny", lora_rank=4, requested_job_id="job-a"))
        endpoint = await mgr.wait_for_ready(created.job_id, poll_interval_s=2.0)
        checkpoints = await mgr.list_checkpoints(created.job_id)
    return created, endpoint, tuple(c["name"] for c in checkpoints)


async def test_transient_faults_are_retried_and_results_unchanged(
    scripted: ScriptedServer, clock: FakeClock
) -> None:
    clean = await run_bootstrap(scripted, clock)

    scripted.jobs.clear()
    scripted.job_states.clear()
    scripted.faults["accounts"] = ["503", "drop"]
    scripted.faults["create_job"] = ["drop", "500", "429:7"]
    scripted.faults["job"] = ["502", "drop", "408"]
    scripted.faults["checkpoints"] = ["504", "drop"]
    faulty_clock = FakeClock()
    faulty = await run_bootstrap(scripted, faulty_clock)

    assert faulty == clean
    assert not any(scripted.faults.values()), "every injected fault was hit"
    assert len(scripted.jobs) == 1  # the retried create stayed idempotent (client-chosen id)
    assert max(faulty_clock.sleeps) >= 7.0  # Retry-After is a floor on the backoff
    assert all(s <= 60.0 for s in faulty_clock.sleeps)


async def test_repeated_create_with_same_id_returns_the_existing_job(
    scripted: ScriptedServer, clock: FakeClock
) -> None:
    async with trainer_mgr(scripted, clock) as mgr:
        first = await mgr.create(TrainerJobConfig(base_model="tiny", requested_job_id="job-b"))
        again = await mgr.create(TrainerJobConfig(base_model="tiny", requested_job_id="job-b"))
    assert first == again
    assert scripted.calls["create_job"] == 2


async def test_non_retryable_4xx_fails_at_once_with_server_message(
    scripted: ScriptedServer, clock: FakeClock
) -> None:
    scripted.faults["create_job"] = ["400:trainingConfig.loraRank: must be an integer in [0, 1024], got 9999"]
    async with trainer_mgr(scripted, clock) as mgr:
        with pytest.raises(ControlPlaneError) as info:
            await mgr.create(TrainerJobConfig(base_model="tiny", lora_rank=9999, requested_job_id="job-c"))
    assert info.value.status == 400
    assert "trainingConfig.loraRank: must be an integer" in str(info.value)
    assert scripted.calls["create_job"] == 1 and clock.sleeps == []


async def test_wrong_key_and_unknown_ids(scripted: ScriptedServer, clock: FakeClock) -> None:
    async with TrainerJobManager("wrong-key", scripted.url, clock=clock) as bad:
        with pytest.raises(AuthenticationError, match="invalid api key"):
            await bad.get("anything")
    async with trainer_mgr(scripted, clock) as mgr:
        with pytest.raises(NotFoundError, match="job nope not found"):
            await mgr.get("nope")
        assert await mgr.try_get("nope") is None
    async with deploy_mgr(scripted, clock) as dm:
        assert await dm.get("nope") is None
        with pytest.raises(DeploymentFailedError, match="does not exist"):
            await dm.wait_for_ready("nope")
    assert clock.sleeps == []


async def test_retries_exhausted_raise_typed_error_with_capped_backoff(
    scripted: ScriptedServer, clock: FakeClock
) -> None:
    scripted.faults["accounts"] = ["503"] * 20
    policy = RestRetryPolicy(max_attempts=5, initial_backoff_s=1.0, max_backoff_s=4.0)
    async with trainer_mgr(scripted, clock, retry_policy=policy) as mgr:
        with pytest.raises(RetriesExhaustedError) as info:
            await mgr.get("x")
    assert info.value.attempts == 5 and info.value.last_status == 503
    assert "injected 503" in str(info.value)
    assert len(clock.sleeps) == 4 and all(s <= 4.0 * 1.5 for s in clock.sleeps)


async def test_wait_for_ready_walks_states_and_gates_on_healthz(
    scripted: ScriptedServer, clock: FakeClock
) -> None:
    scripted.healthz = Script(503, 503, 200)
    async with trainer_mgr(scripted, clock) as mgr:
        created = await mgr.create(TrainerJobConfig(base_model="tiny", lora_rank=8, requested_job_id="job-d"))
        endpoint = await mgr.wait_for_ready(created.job_id, poll_interval_s=3.0)
    assert endpoint.base_url == f"{scripted.url}/training/v1/rlorTrainerJobs/acct/job-d"
    assert endpoint.job_name == "accounts/acct/rlorTrainerJobs/job-d" and endpoint.lora_rank == 8
    assert scripted.calls["healthz"] == 3
    assert clock.sleeps == [3.0] * 4  # PENDING, CREATING, RUNNING+503, RUNNING+503, then ready


async def test_pending_and_ready_budgets_are_separate(scripted: ScriptedServer, clock: FakeClock) -> None:
    async with trainer_mgr(scripted, clock) as mgr:
        await mgr.create(TrainerJobConfig(base_model="tiny", requested_job_id="job-p"))
        scripted.job_states["job-p"] = Script("JOB_STATE_PENDING")
        with pytest.raises(StuckError, match="PENDING"):
            await mgr.wait_for_ready("job-p", poll_interval_s=10, pending_timeout_s=100, timeout_s=5)
        # A long PENDING phase does not eat the ready budget, which starts when PENDING ends.
        scripted.job_states["job-p"] = Script(*["JOB_STATE_PENDING"] * 20, "JOB_STATE_CREATING")
        started = clock.now
        with pytest.raises(StuckError, match="not ready 50s after leaving PENDING"):
            await mgr.wait_for_ready("job-p", poll_interval_s=10, pending_timeout_s=1000, timeout_s=50)
        assert clock.now - started >= 250


async def test_failed_and_stopped_states(scripted: ScriptedServer, clock: FakeClock) -> None:
    async with trainer_mgr(scripted, clock) as mgr:
        await mgr.create(TrainerJobConfig(base_model="tiny", requested_job_id="job-f"))
        scripted.job_states["job-f"] = Script("JOB_STATE_FAILED:trainer process killed by SIGKILL")
        with pytest.raises(TrainerJobFailedError, match="killed by SIGKILL"):
            await mgr.wait_for_ready("job-f")
        # A stopped state right after a resume is tolerated for the settle window.
        scripted.job_states["job-f"] = Script("JOB_STATE_CANCELLED", "JOB_STATE_RUNNING")
        assert (await mgr.wait_for_ready("job-f", poll_interval_s=5, settle_s=30)).job_id == "job-f"
        scripted.job_states["job-f"] = Script("JOB_STATE_CANCELLED")
        with pytest.raises(TrainerJobFailedError, match="CANCELLED"):
            await mgr.wait_for_ready("job-f", poll_interval_s=5, settle_s=30)
        scripted.job_states["job-f"] = Script("JOB_STATE_DELETED")
        with pytest.raises(TrainerJobFailedError, match="DELETED"):
            await mgr.reconnect_and_wait("job-f")


async def test_reconnect_resumes_a_failed_job(scripted: ScriptedServer, clock: FakeClock) -> None:
    async with trainer_mgr(scripted, clock) as mgr:
        await mgr.create(TrainerJobConfig(base_model="tiny", requested_job_id="job-r"))
        scripted.job_states["job-r"] = Script("JOB_STATE_FAILED:trainer process exited with code 1")
        scripted.faults["job"] = ["503", "drop"]  # pod rescheduling noise is tolerated
        endpoint = await mgr.reconnect_and_wait("job-r", poll_interval_s=1.0)
        assert endpoint.job_id == "job-r" and scripted.resumes == 1
        # RUNNING: reconnect only waits, it does not resume again.
        scripted.job_states["job-r"] = Script("JOB_STATE_RUNNING")
        await mgr.reconnect_and_wait("job-r", poll_interval_s=1.0)
        assert scripted.resumes == 1


async def test_reconnect_fails_at_once_on_a_fatal_answer(scripted: ScriptedServer, clock: FakeClock) -> None:
    async with trainer_mgr(scripted, clock) as mgr:
        await mgr.create(TrainerJobConfig(base_model="tiny", requested_job_id="job-x"))
        scripted.faults["job"] = ["403:permission denied"]  # waiting cannot fix a fatal answer
        with pytest.raises(AuthenticationError, match="permission denied"):
            await mgr.reconnect_and_wait("job-x", poll_interval_s=1.0)
    assert clock.sleeps == []


async def test_deployment_create_wait_probe_and_updates(scripted: ScriptedServer, clock: FakeClock) -> None:
    cfg = DeploymentConfig(
        "dep-a",
        "tiny",
        hot_load_trainer_job="accounts/acct/rlorTrainerJobs/job-a",
        hot_load_transition_type="SYNC",
    )
    scripted.deployment_states = Script("CREATING")
    scripted.probe = Script(503, 503, 200)  # hot-load deployments may stay CREATING: the probe decides
    async with deploy_mgr(scripted, clock) as dm:
        info = await dm.create_or_get(cfg)
        assert info.state == "CREATING" and info.inference_model == "accounts/acct/deployments/dep-a"
        assert scripted.deployments["dep-a"]["hotLoadTrainerJob"] == "accounts/acct/rlorTrainerJobs/job-a"
        ready = await dm.wait_for_ready("dep-a", poll_interval_s=2.0)
        assert ready.deployment_id == "dep-a" and clock.sleeps == [2.0, 2.0]
        assert dm.account_id == "acct" and dm.inference_url == scripted.url
        again = await dm.create_or_get(cfg)  # existing and healthy: returned unchanged
        assert again.deployment_id == "dep-a" and scripted.calls["create_deployment"] == 1
        await dm.scale_to_zero("dep-a")
        assert scripted.deployments["dep-a"]["maxReplicaCount"] == 0
        scripted.deployment_states = Script("FAILED:deployment process killed by SIGKILL")
        with pytest.raises(DeploymentFailedError, match="killed by SIGKILL"):
            await dm.wait_for_ready("dep-a")
        scripted.deployment_states = Script("FAILED", "READY")
        await dm.create_or_get(cfg)  # FAILED: deleted and recreated
        assert scripted.calls["create_deployment"] == 2


async def test_wait_for_hotload_completion_rule(scripted: ScriptedServer, clock: FakeClock) -> None:
    def replica(
        current: str | None, stage: str = "idle", target: str | None = None, ready: bool = True
    ) -> dict:
        state = {
            "stage": stage,
            "target_snapshot_identity": target,
            "error_message": "boom" if stage == "error" else None,
        }
        return {
            "replicas": [{"current_snapshot_identity": current, "readiness": ready, "loading_state": state}]
        }

    async with deploy_mgr(scripted, clock) as dm:
        scripted.hotload_status = Script(
            {"replicas": []},
            replica(None, "downloading", "s1"),
            replica("old", "error", "old"),
            replica("s1"),
        )
        scripted.faults["hot_load"] = ["503"]
        meta = {
            "previous_snapshot_identity": "s0",
            "compression_format": "arc_v2",
            "checksum_format": "alder32",
        }
        assert await dm.hotload_and_wait("dep", "tiny", "s1", meta, poll_interval=1.0)
        post = scripted.hotload_posts[-1]
        assert post["body"]["incremental_snapshot_metadata"] == meta and post["body"]["identity"] == "s1"
        assert post["headers"]["fireworks-deployment"] == "accounts/acct/deployments/dep"
        assert post["headers"]["fireworks-model"] == "tiny"

        scripted.hotload_status = Script(replica("s1", "error", "s2"))
        with pytest.raises(HotloadError, match="boom"):
            await dm.wait_for_hotload("dep", "tiny", "s2", poll_interval=1.0)

        scripted.hotload_status = Script(replica("s1", "downloading", "s3"))
        assert not await dm.wait_for_hotload("dep", "tiny", "s3", timeout_seconds=10, poll_interval=1.0)
        assert dm.last_hotload_error_message and "not done after 10s" in dm.last_hotload_error_message

        scripted.hotload_status = Script({"replicas": "garbage"})
        with pytest.raises(HotloadError, match="Unrecognized"):
            await dm.wait_for_hotload("dep", "tiny", "s4")


async def test_warmup_retries_until_200(scripted: ScriptedServer, clock: FakeClock) -> None:
    scripted.probe = Script(425, 503, 200)
    async with deploy_mgr(scripted, clock) as dm:
        assert await dm.warmup("accounts/acct/deployments/dep", max_retries=5, retry_interval_s=2.0)
        scripted.probe = Script(503)
        assert not await dm.warmup("accounts/acct/deployments/dep", max_retries=2, retry_interval_s=2.0)


def test_invalid_configs_name_the_field() -> None:
    with pytest.raises(ConfigError, match="lora_rank"):
        TrainerJobConfig(base_model="tiny", lora_rank=-1).validate()
    with pytest.raises(ConfigError, match="gradient_accumulation_steps"):
        TrainerJobConfig(base_model="tiny", gradient_accumulation_steps=4).validate()
    with pytest.raises(ConfigError, match="requested_job_id"):
        TrainerJobConfig(base_model="tiny", requested_job_id="Bad_ID").validate()
    with pytest.raises(ConfigError, match="deployment_id"):
        DeploymentConfig("UPPER", "tiny").validate()
    with pytest.raises(ConfigError, match="hot_load_trainer_job"):
        DeploymentConfig("dep", "tiny", hot_load_trainer_job="job-a").validate()
    with pytest.raises(ConfigError, match="min_replica_count"):
        DeploymentConfig("dep", "tiny", min_replica_count=2, max_replica_count=1).validate()
    with pytest.raises(ConfigError, match="api_key"):
        TrainerJobManager("", "http://127.0.0.1:1")


async def test_hotload_drops_reset_prompt_cache_when_the_gateway_rejects_it(
    scripted: ScriptedServer, clock: FakeClock
) -> None:
    scripted.faults["hot_load"] = ["400:extra inputs are not permitted: reset_prompt_cache"]
    async with deploy_mgr(scripted, clock) as dm:
        await dm.hotload("dep", "tiny", "s1")
        await dm.hotload("dep", "tiny", "s2")
    assert [p["body"] for p in scripted.hotload_posts] == [{"identity": "s1"}, {"identity": "s2"}]


async def test_reconnect_gives_up_on_a_job_stuck_in_a_transitional_state(
    scripted: ScriptedServer, clock: FakeClock
) -> None:
    async with trainer_mgr(scripted, clock) as mgr:
        await mgr.create(TrainerJobConfig(base_model="tiny", requested_job_id="job-s"))
        scripted.job_states["job-s"] = Script("JOB_STATE_CANCELLING")
        with pytest.raises(StuckError, match="stuck in JOB_STATE_CANCELLING"):
            await mgr.reconnect_and_wait("job-s", poll_interval_s=10, max_wait_for_resumable_s=60)
    assert scripted.resumes == 0 and sum(clock.sleeps) >= 60


def test_manager_survives_a_new_event_loop_per_call(scripted_url_server: str) -> None:
    import asyncio

    mgr = TrainerJobManager(KEY, scripted_url_server)
    # Fireworks users call asyncio.run per call; the manager must not reuse a dead loop's session.
    assert asyncio.run(mgr.resolve_account_id()) == "acct"
    assert asyncio.run(mgr.try_get("missing")) is None
    asyncio.run(mgr.aclose())

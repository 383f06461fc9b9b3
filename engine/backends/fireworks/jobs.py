"""Async TrainerJobManager: Fireworks' RLOR trainer-job REST client (create, wait, resume, reconnect)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

from engine.backends.fireworks.config import (
    CreatedTrainerJob,
    TrainerEndpoint,
    TrainerJobConfig,
    new_trainer_job_id,
)
from engine.backends.fireworks.errors import ConflictError, TrainerJobFailedError
from engine.backends.fireworks.phases import (
    JOB_STATE_RUNNING,
    RESUMABLE_STATES,
    job_phase,
    job_status_message,
)
from engine.backends.fireworks.rest import RestClient, RestRetryPolicy
from engine.clock import Clock
from engine.errors import RetryableError, StuckError
from engine.log import get_logger

log = get_logger("control.trainer")

TRAINER_READY_TIMEOUT_S = 900.0
PENDING_TIMEOUT_S = 172800.0
STOPPED_SETTLE_S = 30.0
HEALTHZ_TIMEOUT_S = 5.0
HEARTBEAT_S = 60.0


class TrainerJobManager(RestClient):
    """``async with TrainerJobManager(api_key, base_url) as mgr: created = await mgr.create(cfg)``."""

    def __init__(
        self,
        api_key: str,
        base_url: str = "https://api.fireworks.ai",
        *,
        trainer_gateway_url: str | None = None,
        additional_headers: Mapping[str, str] | None = None,
        clock: Clock | None = None,
        retry_policy: RestRetryPolicy | None = None,
        account_id: str | None = None,
    ) -> None:
        super().__init__(
            api_key,
            base_url,
            additional_headers=additional_headers,
            clock=clock,
            retry_policy=retry_policy,
            account_id=account_id,
        )
        gateway = trainer_gateway_url or os.environ.get("FIREWORKS_TRAINER_GATEWAY_URL") or self.base_url
        self.trainer_gateway_url = gateway.rstrip("/")
        self.boot_time_s: float | None = None

    async def _jobs_path(self, job_id: str | None = None) -> str:
        account = await self.resolve_account_id()
        path = f"/v1/accounts/{account}/rlorTrainerJobs"
        return path if job_id is None else f"{path}/{quote(job_id, safe='')}"

    def endpoint_url(self, job_id: str) -> str:
        return f"{self.trainer_gateway_url}/training/v1/rlorTrainerJobs/{self.account_id}/{job_id}"

    async def create(self, config: TrainerJobConfig) -> CreatedTrainerJob:
        """POST the job with a client-chosen id; a 409 (e.g. our own retried create) returns that job."""
        job_id = config.requested_job_id or new_trainer_job_id()
        params, body = config.to_request(job_id)
        path = await self._jobs_path()
        try:
            result = await self.request("POST", path, params=params, json_body=body)
            job = result.body or {}
        except ConflictError as exc:
            job = await self.get(job_id)
            if job_phase(str(job.get("state"))) == "tombstone":
                raise ConflictError(
                    f"trainer job {job_id!r} is {job.get('state')} and cannot be recreated with the same ID",
                    status=409,
                    url=exc.url,
                    body=job,
                ) from exc
        message = job_status_message(job)
        if message.startswith("Warning:"):
            log.warning("trainer job created with a warning", job_id=job_id, message=message)
        name = str(job.get("name") or f"accounts/{self.account_id}/rlorTrainerJobs/{job_id}")
        log.info("trainer job requested", job_id=job_id, state=job.get("state"))
        return CreatedTrainerJob(job_name=name, job_id=name.rsplit("/", 1)[-1])

    async def try_get(self, job_id: str) -> dict[str, Any] | None:
        result = await self.request("GET", await self._jobs_path(job_id), timeout_s=30.0, none_on_404=True)
        return None if result.status == 404 else dict(result.body or {})

    async def get(self, job_id: str) -> dict[str, Any]:
        result = await self.request("GET", await self._jobs_path(job_id), timeout_s=30.0)
        return dict(result.body or {})

    async def delete(self, job_id: str) -> None:
        """Soft delete (the row becomes JOB_STATE_DELETED); an already-missing job is fine."""
        await self.request("DELETE", await self._jobs_path(job_id), none_on_404=True)

    async def resume(self, job_id: str) -> dict[str, Any]:
        result = await self.request("POST", f"{await self._jobs_path(job_id)}:resume", json_body={})
        return dict(result.body or {})

    async def list_checkpoints(self, job_id: str, *, page_size: int = 200) -> list[dict[str, Any]]:
        """All checkpoints of a job, oldest first, following ``nextPageToken``."""
        path = f"{await self._jobs_path(job_id)}/checkpoints"
        rows: list[dict[str, Any]] = []
        token = ""
        while True:
            params = {"pageSize": str(page_size)} | ({"pageToken": token} if token else {})
            body = (await self.request("GET", path, params=params, timeout_s=30.0)).body or {}
            rows.extend(body.get("checkpoints") or [])
            token = body.get("nextPageToken") or ""
            if not token:
                return rows

    async def healthz(self, job_id: str) -> tuple[int | None, str]:
        await self.resolve_account_id()
        return await self.probe(
            "GET", f"{self.endpoint_url(job_id)}/api/v1/healthz", timeout_s=HEALTHZ_TIMEOUT_S
        )

    def _endpoint(self, job_id: str, job_name: str | None, job: dict[str, Any]) -> TrainerEndpoint:
        training = job.get("trainingConfig") or {}
        return TrainerEndpoint(
            job_id=job_id,
            job_name=job_name
            or str(job.get("name") or f"accounts/{self.account_id}/rlorTrainerJobs/{job_id}"),
            base_url=self.endpoint_url(job_id),
            max_context_length=training.get("maxContextLength"),
            base_model=training.get("baseModel"),
            lora_rank=training.get("loraRank"),
        )

    async def wait_for_ready(
        self,
        job_id: str,
        job_name: str | None = None,
        *,
        poll_interval_s: float = 5.0,
        timeout_s: float = TRAINER_READY_TIMEOUT_S,
        pending_timeout_s: float = PENDING_TIMEOUT_S,
        settle_s: float = STOPPED_SETTLE_S,
    ) -> TrainerEndpoint:
        """Poll until RUNNING and the trainer's healthz answers 200 through the gateway.

        Two budgets: ``pending_timeout_s`` while the job waits for capacity (PENDING), ``timeout_s``
        from the moment it first leaves PENDING. Stopped states fail only after ``settle_s`` (a
        resume just issued flips the state asynchronously); FAILED and tombstones fail at once.
        """
        clock = self.clock
        started = clock.monotonic()
        left_pending_at: float | None = None
        last_state, last_log, last_health = "", started, ""
        while True:
            job = await self.get(job_id)
            now = clock.monotonic()
            state = str(job.get("state") or "JOB_STATE_UNSPECIFIED")
            phase = job_phase(state)
            message = job_status_message(job)
            if state != last_state or now - last_log >= HEARTBEAT_S:
                log.info("trainer job state", job_id=job_id, state=state, message=message)
                last_state, last_log = state, now
            if phase == "tombstone":
                raise TrainerJobFailedError(f"trainer job {job_id!r} is {state}", job_id=job_id, state=state)
            if phase == "failed":
                raise TrainerJobFailedError(
                    f"trainer job {job_id!r} failed: {message or 'no status message'}",
                    job_id=job_id,
                    state=state,
                )
            if phase == "stopped" and now - started >= settle_s:
                raise TrainerJobFailedError(
                    f"trainer job {job_id!r} is {state}: {message}", job_id=job_id, state=state
                )
            if phase == "pending":
                if now - started >= pending_timeout_s:
                    raise StuckError(f"trainer job {job_id!r} still PENDING after {pending_timeout_s:g}s")
            else:
                left_pending_at = now if left_pending_at is None else left_pending_at
                if phase == "running":
                    status, detail = await self.healthz(job_id)
                    if status == 200:
                        self.boot_time_s = clock.monotonic() - started
                        log.info("trainer ready", job_id=job_id, boot_time_s=round(self.boot_time_s, 3))
                        return self._endpoint(job_id, job_name, job)
                    last_health = f"healthz {status}: {detail}"
                if clock.monotonic() - left_pending_at >= timeout_s:
                    raise StuckError(
                        f"trainer job {job_id!r} not ready {timeout_s:g}s after leaving PENDING "
                        f"(state {state}{'; ' + last_health if last_health else ''})"
                    )
            await clock.sleep(poll_interval_s)

    async def resume_and_wait(self, job_id: str, **kwargs: Any) -> TrainerEndpoint:
        """``POST :resume`` (the same bucket and saved state), then wait for RUNNING + healthz."""
        job = await self.resume(job_id)
        log.info("trainer job resume requested", job_id=job_id, state=job.get("state"))
        kwargs.setdefault("settle_s", STOPPED_SETTLE_S)
        return await self._wait_after_resume(job_id, **kwargs)

    async def _wait_after_resume(self, job_id: str, *, settle_s: float, **kwargs: Any) -> TrainerEndpoint:
        # A resume flips FAILED -> CREATING asynchronously on remote control planes: within the settle
        # window a FAILED read is the old state, so poll again instead of giving up.
        started = self.clock.monotonic()
        poll = float(kwargs.get("poll_interval_s", 5.0))
        while True:
            try:
                return await self.wait_for_ready(job_id, settle_s=settle_s, **kwargs)
            except TrainerJobFailedError as exc:
                if exc.state not in RESUMABLE_STATES or self.clock.monotonic() - started >= settle_s:
                    raise
                await self.clock.sleep(poll)

    async def reconnect_and_wait(
        self,
        job_id: str,
        *,
        poll_interval_s: float = 5.0,
        timeout_s: float = 600.0,
        max_wait_for_resumable_s: float = 120.0,
        pending_timeout_s: float = PENDING_TIMEOUT_S,
    ) -> TrainerEndpoint:
        """Reattach to a job after a client or trainer crash: RUNNING -> wait; FAILED/CANCELLED/
        PAUSED/COMPLETED -> resume then wait; transitional states are polled until
        ``max_wait_for_resumable_s``. GET errors are tolerated for that long (pod rescheduling)."""
        started = self.clock.monotonic()
        waits: dict[str, Any] = {
            "poll_interval_s": poll_interval_s,
            "timeout_s": timeout_s,
            "pending_timeout_s": pending_timeout_s,
        }
        while True:
            elapsed = self.clock.monotonic() - started
            try:
                job = await self.get(job_id)
            except RetryableError as exc:  # a fatal answer (401, 404, bad request) does not heal by waiting
                if elapsed >= max_wait_for_resumable_s:
                    raise StuckError(f"trainer job {job_id!r} unreadable for {elapsed:.0f}s: {exc}") from exc
                log.warning("reconnect: get failed, retrying", job_id=job_id, error=str(exc))
                await self.clock.sleep(poll_interval_s)
                continue
            state = str(job.get("state"))
            if state == JOB_STATE_RUNNING:
                return await self.wait_for_ready(job_id, **waits)
            if state in RESUMABLE_STATES:
                log.info("reconnect: resuming", job_id=job_id, state=state, message=job_status_message(job))
                return await self.resume_and_wait(job_id, **waits)
            if job_phase(state) == "tombstone":
                raise TrainerJobFailedError(f"trainer job {job_id!r} is {state}", job_id=job_id, state=state)
            if job_phase(state) in ("pending", "starting"):
                # CREATING / PENDING progress by themselves: the ready wait owns their budgets.
                return await self.wait_for_ready(job_id, **waits)
            if elapsed >= max_wait_for_resumable_s:
                raise StuckError(f"trainer job {job_id!r} stuck in {state} for {elapsed:.0f}s")
            await self.clock.sleep(poll_interval_s)

"""Async DeploymentManager: deployments REST, readiness with an inference probe, and the hot-load API."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

from engine.backends.fireworks.config import DeploymentConfig, DeploymentInfo
from engine.backends.fireworks.errors import (
    ConflictError,
    ControlPlaneError,
    DeploymentFailedError,
    HotloadError,
)
from engine.backends.fireworks.phases import DEPLOYMENT_BAD, evaluate_hotload_status
from engine.backends.fireworks.rest import RestClient, RestRetryPolicy
from engine.clock import Clock
from engine.errors import RetryableError, StuckError
from engine.log import get_logger

log = get_logger("control.deployment")

PROBE_PROMPT = [1, 2]
DELETION_TIMEOUT_S = 60.0
DELETION_POLL_S = 2.0


class DeploymentManager(RestClient):
    """``async with DeploymentManager(api_key, base_url) as mgr: info = await mgr.create_or_get(cfg)``."""

    def __init__(
        self,
        api_key: str,
        base_url: str = "https://api.fireworks.ai",
        *,
        inference_url: str | None = None,
        hotload_api_url: str | None = None,
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
        self.inference_url = (inference_url or self.base_url).rstrip("/")
        self.hotload_api_url = (hotload_api_url or self.base_url).rstrip("/")
        self.boot_time_s: float | None = None
        self.last_hotload_error_message: str | None = None
        self._send_reset_prompt_cache = True

    async def _path(self, deployment_id: str | None = None) -> str:
        account = await self.resolve_account_id()
        path = f"/v1/accounts/{account}/deployments"
        return path if deployment_id is None else f"{path}/{quote(deployment_id, safe='')}"

    def model_name(self, deployment_id: str) -> str:
        """The ``model`` string of completions served by this deployment."""
        return f"accounts/{self.account_id}/deployments/{deployment_id}"

    async def get(self, deployment_id: str) -> DeploymentInfo | None:
        result = await self.request("GET", await self._path(deployment_id), timeout_s=30.0, none_on_404=True)
        return None if result.status == 404 else DeploymentInfo.from_json(result.body or {})

    async def create_or_get(self, config: DeploymentConfig, force_recreate: bool = False) -> DeploymentInfo:
        """Return the existing deployment unchanged (its config is not reconciled) unless it is
        FAILED/DELETING/DELETED or ``force_recreate``: then delete it, wait for it to go, create."""
        params, body = config.to_request()
        existing = await self.get(config.deployment_id)
        if existing is not None and not force_recreate and existing.state not in DEPLOYMENT_BAD:
            log.info("deployment exists", deployment_id=config.deployment_id, state=existing.state)
            return existing
        if existing is not None:
            await self.delete(config.deployment_id)
            await self._wait_deleted(config.deployment_id)
        try:
            result = await self.request("POST", await self._path(), params=params, json_body=body)
            info = DeploymentInfo.from_json(result.body or {})
        except ConflictError:
            found = await self.get(config.deployment_id)
            if found is None:
                raise
            info = found
        log.info("deployment requested", deployment_id=info.deployment_id, state=info.state)
        return info

    async def _wait_deleted(self, deployment_id: str) -> None:
        deadline = self.clock.monotonic() + DELETION_TIMEOUT_S
        while await self.get(deployment_id) is not None:
            if self.clock.monotonic() >= deadline:
                raise StuckError(
                    f"deployment {deployment_id!r} still present {DELETION_TIMEOUT_S:g}s after delete"
                )
            await self.clock.sleep(DELETION_POLL_S)

    async def delete(self, deployment_id: str) -> None:
        await self.request(
            "DELETE",
            await self._path(deployment_id),
            params={"ignoreChecks": "true", "hard": "true"},
            none_on_404=True,
        )

    async def update(self, deployment_id: str, body: dict[str, Any], update_mask: str) -> DeploymentInfo:
        result = await self.request(
            "PATCH", await self._path(deployment_id), params={"updateMask": update_mask}, json_body=body
        )
        return DeploymentInfo.from_json(result.body or {})

    async def scale_to_zero(self, deployment_id: str) -> DeploymentInfo:
        result = await self.request(
            "PATCH", await self._path(deployment_id), json_body={"maxReplicaCount": 0, "minReplicaCount": 0}
        )
        return DeploymentInfo.from_json(result.body or {})

    async def probe_inference(self, deployment_id: str, *, timeout_s: float = 10.0) -> tuple[int | None, str]:
        await self.resolve_account_id()
        payload = {
            "model": self.model_name(deployment_id),
            "prompt": PROBE_PROMPT,
            "max_tokens": 4,
            "temperature": 0.0,
        }
        return await self.probe(
            "POST", f"{self.inference_url}/inference/v1/completions", json_body=payload, timeout_s=timeout_s
        )

    async def wait_for_ready(
        self, deployment_id: str, *, timeout_s: float = 600.0, poll_interval_s: float = 15.0
    ) -> DeploymentInfo:
        """READY -> done; FAILED/DELETING/DELETED -> raise; CREATING with a successful inference probe
        counts as ready (hot-load deployments may stay CREATING on Fireworks)."""
        started = self.clock.monotonic()
        last_state = ""
        while True:
            info = await self.get(deployment_id)
            if info is None:
                raise DeploymentFailedError(
                    f"deployment {deployment_id!r} does not exist",
                    deployment_id=deployment_id,
                    state="MISSING",
                )
            if info.state != last_state:
                log.info("deployment state", deployment_id=deployment_id, state=info.state)
                last_state = info.state
            if info.state in DEPLOYMENT_BAD:
                reason = (info.raw.get("status") or {}).get("message") or ""
                raise DeploymentFailedError(
                    f"deployment {deployment_id!r} is {info.state}: {reason}".rstrip(": "),
                    deployment_id=deployment_id,
                    state=info.state,
                )
            ready = info.state == "READY"
            if not ready and info.state == "CREATING":
                status, _ = await self.probe_inference(deployment_id)
                ready = status == 200
            if ready:
                self.boot_time_s = self.clock.monotonic() - started
                log.info(
                    "deployment ready", deployment_id=deployment_id, boot_time_s=round(self.boot_time_s, 3)
                )
                return info
            if self.clock.monotonic() - started >= timeout_s:
                raise StuckError(
                    f"deployment {deployment_id!r} not ready after {timeout_s:g}s (state {info.state})"
                )
            await self.clock.sleep(poll_interval_s)

    def _hotload_headers(self, deployment_id: str, base_model: str) -> dict[str, str]:
        return {
            **self.bearer(),
            "fireworks-model": base_model,
            "fireworks-deployment": self.model_name(deployment_id),
        }

    async def hotload(
        self,
        deployment_id: str,
        base_model: str,
        snapshot_identity: str,
        incremental_snapshot_metadata: dict[str, Any] | None = None,
        reset_prompt_cache: bool = True,
        timeout: float = 60.0,  # noqa: ASYNC109  # Fireworks' parameter name; bounds one request
    ) -> dict[str, Any]:
        """Ask the deployment to load ``snapshot_identity`` from its bucket (delta when metadata is given)."""
        await self.resolve_account_id()
        body: dict[str, Any] = {"identity": snapshot_identity}
        if self._send_reset_prompt_cache:
            body["reset_prompt_cache"] = reset_prompt_cache
        if incremental_snapshot_metadata:
            body["incremental_snapshot_metadata"] = incremental_snapshot_metadata
        url = f"{self.hotload_api_url}/hot_load/v1/models/hot_load"
        headers = self._hotload_headers(deployment_id, base_model)
        try:
            result = await self.request("POST", url, json_body=body, headers=headers, timeout_s=timeout)
        except ControlPlaneError as exc:
            # Some gateways reject the field ("extra inputs are not permitted"): drop it for good.
            if exc.status != 400 or "reset_prompt_cache" not in str(exc) or "reset_prompt_cache" not in body:
                raise
            self._send_reset_prompt_cache = False
            del body["reset_prompt_cache"]
            result = await self.request("POST", url, json_body=body, headers=headers, timeout_s=timeout)
        log.info("hotload requested", deployment_id=deployment_id, identity=snapshot_identity)
        return dict(result.body or {})

    async def hotload_check_status(
        self,
        deployment_id: str,
        base_model: str,
        timeout: float = 30.0,  # noqa: ASYNC109
    ) -> dict[str, Any]:
        await self.resolve_account_id()
        result = await self.request(
            "GET",
            f"{self.hotload_api_url}/hot_load/v1/models/hot_load",
            headers=self._hotload_headers(deployment_id, base_model),
            timeout_s=timeout,
        )
        return dict(result.body or {})

    async def wait_for_hotload(
        self,
        deployment_id: str,
        base_model: str,
        expected_identity: str,
        timeout_seconds: float = 400.0,
        poll_interval: float = 5.0,
    ) -> bool:
        """True once replicas[0] is ready on ``expected_identity``; False on timeout (the reason is in
        ``last_hotload_error_message``). An error stage aimed at ``expected_identity`` raises HotloadError;
        a fatal answer to a poll (a refused key, a 4xx) propagates: waiting cannot change it."""
        self.last_hotload_error_message = None
        started = self.clock.monotonic()
        detail = "no status read yet"
        while True:
            # One poll retries inside the REST client; bound it by what is left of this wait, so the
            # wait cannot overrun its timeout by a retry budget.
            remaining = max(1.0, timeout_seconds - (self.clock.monotonic() - started))
            try:
                async with asyncio.timeout(remaining):
                    status = await self.hotload_check_status(deployment_id, base_model)
                progress = evaluate_hotload_status(status, expected_identity)
            except TimeoutError:
                detail = "status poll got no answer before the deadline"
                log.warning("hotload status poll timed out", deployment_id=deployment_id)
            except RetryableError as exc:  # a poll whose retries ran out: poll again; a fatal one raises
                detail = f"status poll failed: {exc}"
                log.warning("hotload status poll failed", deployment_id=deployment_id, error=str(exc))
            else:
                detail = progress.detail
                if progress.done:
                    return True
                if progress.failed:
                    self.last_hotload_error_message = f"hot-load of {expected_identity!r} failed: {detail}"
                    raise HotloadError(self.last_hotload_error_message)
            if self.clock.monotonic() - started >= timeout_seconds:
                self.last_hotload_error_message = (
                    f"hot-load of {expected_identity!r} into {deployment_id!r} not done after "
                    f"{timeout_seconds:g}s ({detail})"
                )
                log.warning("hotload timed out", deployment_id=deployment_id, detail=detail)
                return False
            await self.clock.sleep(poll_interval)

    async def hotload_and_wait(
        self,
        deployment_id: str,
        base_model: str,
        snapshot_identity: str,
        incremental_snapshot_metadata: dict[str, Any] | None = None,
        *,
        reset_prompt_cache: bool = True,
        timeout_seconds: float = 400.0,
        poll_interval: float = 5.0,
    ) -> bool:
        await self.hotload(
            deployment_id, base_model, snapshot_identity, incremental_snapshot_metadata, reset_prompt_cache
        )
        return await self.wait_for_hotload(
            deployment_id,
            base_model,
            snapshot_identity,
            timeout_seconds=timeout_seconds,
            poll_interval=poll_interval,
        )

    async def warmup(self, model: str, max_retries: int = 30, retry_interval_s: float = 10.0) -> bool:
        """Token-in probe until HTTP 200 (``model`` = ``accounts/{a}/deployments/{id}``)."""
        payload = {"model": model, "prompt": PROBE_PROMPT, "max_tokens": 4, "temperature": 0.0}
        detail = ""
        for attempt in range(1, max_retries + 1):
            status, detail = await self.probe(
                "POST", f"{self.inference_url}/inference/v1/completions", json_body=payload, timeout_s=30.0
            )
            if status == 200:
                return True
            log.info("warmup not yet", model=model, attempt=attempt, status=status, detail=detail)
            if attempt < max_retries:
                await self.clock.sleep(retry_interval_s)
        log.warning("warmup failed", model=model, detail=detail)
        return False

    async def reattach_trainer(
        self,
        deployment_id: str,
        *,
        trainer_job_name: str,
        timeout_s: float = 600.0,
        poll_interval_s: float = 5.0,
        hot_load_transition_type: str | None = None,
    ) -> DeploymentInfo:
        """Point a deployment at a new trainer's bucket (rolls the serving process), then wait READY.
        Callers must reset their delta chain: the new bucket has no snapshot the deployment holds."""
        await self.wait_for_ready(deployment_id, timeout_s=timeout_s, poll_interval_s=poll_interval_s)
        body: dict[str, Any] = {"hotLoadTrainerJob": trainer_job_name}
        mask = ["hot_load_trainer_job"]
        if hot_load_transition_type:
            body["hotLoadTransitionType"] = hot_load_transition_type
            mask.append("hot_load_transition_type")
        await self.update(deployment_id, body, ",".join(mask))
        return await self.wait_for_ready(deployment_id, timeout_s=timeout_s, poll_interval_s=poll_interval_s)

"""The trainer routes only Fireworks' training client (``fireworks-ai`` 1.2.30) calls, and its JSON
dialect of the training calls, registered by ``app.build_app`` beside tinker's protocol.

Both clients reach one implementation: a JSON ``forward``/``forward_backward`` decodes to the same
request as tinker's protobuf (engine.local.trainer.json_dialect) and is queued on the same model.

What Fireworks documents, and what this trainer does:

* ``POST /api/v1/forward``: a forward pass in JSON (tinker sends ``forward_only`` protobuf).
* ``POST /api/v1/unload_model``: a future that resolves once the model's accepted work is done and
  the model is freed; later calls naming it get 404.
* ``GET /api/v1/list_checkpoints``: ``{"checkpoints": [names]}`` of this trainer's ``save_state``
  checkpoints, oldest first; ``load_weights`` accepts such a bare name as well as a ``tinker://``
  path (Fireworks' client refuses URIs and passes names).
* ``POST /api/v1/weights_info``: a checkpoint's base model and LoRA settings, by path or name.
* ``weight_sync`` (RDMA), ``load_adapter`` (a PEFT adapter from Fireworks' model registry or
  ``gs://``), ``create_sampling_route`` (serverless routing) and ``auth/token`` (JWT exchange): the
  embedded trainer has none of these, so each answers 501 saying so and what to use instead.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import web

from engine.local.http_server import read_body, read_json
from engine.local.inputs import parse_json_object
from engine.local.trainer import checkpoints
from engine.local.trainer.config import NotFound, TrainerBadRequest
from engine.local.trainer.futures import Outcome
from engine.local.trainer.json_dialect import decode_json_forward
from engine.local.trainer.limits import MAX_JSON_BYTES
from engine.local.trainer.logs import LazyLogger

if TYPE_CHECKING:
    from engine.local.trainer.app import Idempotency
    from engine.local.trainer.service import TrainerService

log = LazyLogger("trainer.fireworks")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
UNLOAD_IDLE_TIMEOUT_S = 600.0


class NotImplementedHere(TrainerBadRequest):
    """A documented Fireworks operation the embedded trainer cannot perform."""

    status = 501


def is_json(request: web.Request) -> bool:
    return request.content_type == "application/json"


# ---- save_state checkpoints by name ------------------------------------------------------------


def state_names(state_dir: Path) -> list[tuple[str, Path]]:
    """(name, directory) of every save_state checkpoint on this trainer, oldest first."""
    found: list[tuple[float, str, Path]] = []
    if state_dir.is_dir():
        for target in state_dir.glob("*/weights/*"):
            meta = target / "meta.json"
            if target.is_symlink() or target.parent.parent.is_symlink() or not meta.is_file():
                continue
            found.append((meta.stat().st_mtime, target.name, target))
    found.sort()
    return [(name, target) for _, name, target in found]


def resolve_state(state_dir: Path, ref: Any, field: str = "path") -> tuple[checkpoints.TinkerPath, Path]:
    """A ``tinker://<run>/weights/<name>`` path or a bare checkpoint name (the latest saved under
    it) as (its tinker path, directory). Fireworks' cross-job references need its control plane's
    buckets. Blocking (a bare name globs the state dir): call it off the event loop."""
    if isinstance(ref, str) and ref.startswith("cross_job://"):
        raise NotImplementedHere(
            f"{field} {ref!r}: cross-job checkpoint references are resolved by Fireworks' control "
            "plane; on the embedded stack load a checkpoint of this trainer job (its name or path)"
        )
    if isinstance(ref, str) and not ref.startswith("tinker://"):
        name = checkpoints.safe_name(ref, field)
        matches = [target for n, target in state_names(state_dir) if n == name]
        if not matches:
            raise NotFound(f"{field}: no checkpoint named {name!r} on this trainer")
        target = matches[-1]
        return checkpoints.TinkerPath(target.parent.parent.name, "weights", name), target
    tp = checkpoints.parse_tinker_path(ref, field)
    if tp.kind != "weights":
        raise TrainerBadRequest(
            f"{field} {ref!r}: only weights/ (save_state) paths can seed a training client"
        )
    return tp, checkpoints.state_path(state_dir, tp.run_id, tp.name)


# ---- handlers ------------------------------------------------------------------------------------


def add_routes(app: web.Application, svc: TrainerService, idem: Idempotency) -> Handler:
    """Register the Fireworks-only routes; returns the JSON ``forward_backward`` handler, which
    ``app`` calls for a JSON body on the shared route."""

    async def _json(request: web.Request) -> dict[str, Any]:
        return await read_json(request, max_bytes=min(MAX_JSON_BYTES, svc.config.max_body_bytes))

    def json_training(forward_only: bool) -> Handler:
        async def handler(request: web.Request) -> web.Response:
            if (seen := idem.get(request)) is not None:
                return web.json_response(seen)
            raw = await read_body(request)  # bounded by max_body_bytes, as the protobuf path

            def decode() -> Any:
                return decode_json_forward(parse_json_object(raw), len(raw), forward_only=forward_only)

            # Parsing a large batch is CPU work: off the loop (submitting stays on it).
            answer = svc.forward_backward(await asyncio.to_thread(decode))
            idem.put(request, answer)
            return web.json_response(answer)

        return handler

    async def unload_model(request: web.Request) -> web.Response:
        if (seen := idem.get(request)) is not None:
            return web.json_response(seen)
        entry = svc.entry((await _json(request)).get("model_id"))
        svc.models.pop(entry.model_id, None)  # new work naming it is refused from now on
        rid = svc.store.create("unload_model")

        async def unload() -> None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(UNLOAD_IDLE_TIMEOUT_S):
                    await entry.queue.wait_idle()  # accepted operations finish first
            await entry.queue.close(f"model {entry.model_id} was unloaded")
            entry.executor.shutdown(wait=False)
            log.info("model_unloaded", model_id=entry.model_id)
            svc.store.resolve(rid, Outcome(json={"type": "unload_model", "model_id": entry.model_id}))

        svc.background(unload())
        answer = {"request_id": rid, "model_id": entry.model_id}
        idem.put(request, answer)
        return web.json_response(answer)

    # Both read the state dir (a glob and a stat per checkpoint): off the loop.
    async def list_checkpoints(request: web.Request) -> web.Response:
        names = [name for name, _ in await asyncio.to_thread(state_names, svc.state_dir)]
        return web.json_response({"checkpoints": list(dict.fromkeys(names))})

    def read_weights_info(ref: Any) -> dict[str, Any]:
        _, target = resolve_state(svc.state_dir, ref, "tinker_path")
        meta = checkpoints.read_meta(target)
        raw_lora = meta.get("lora")
        lora: dict[str, Any] = raw_lora if isinstance(raw_lora, dict) else {}
        rank = int(lora.get("rank", 0) or 0)
        return {
            "base_model": svc.config.model,
            "is_lora": rank > 0,
            "lora_rank": rank or None,
            "train_unembed": lora.get("train_unembed") if rank else None,
            "train_mlp": lora.get("train_mlp") if rank else None,
            "train_attn": lora.get("train_attn") if rank else None,
        }

    async def weights_info(request: web.Request) -> web.Response:
        body = await _json(request)
        return web.json_response(await asyncio.to_thread(read_weights_info, body.get("tinker_path")))

    def unavailable(why: str) -> Handler:
        async def handler(request: web.Request) -> web.Response:
            raise NotImplementedHere(f"{request.path.removeprefix('/api/v1/')}: {why}")

        return handler

    r = app.router
    r.add_post("/api/v1/forward", json_training(forward_only=True))
    r.add_post("/api/v1/unload_model", unload_model)
    r.add_get("/api/v1/list_checkpoints", list_checkpoints)
    r.add_post("/api/v1/weights_info", weights_info)
    r.add_post(
        "/api/v1/weight_sync",
        unavailable(
            "RDMA weight sync is not available on the embedded trainer (create_model reports "
            "supports_rdma_weight_sync=false); publish with save_weights_for_sampler and a hot-load"
        ),
    )
    r.add_post(
        "/api/v1/load_adapter",
        unavailable(
            "the embedded trainer cannot read PEFT adapters (no model registry, no gs:// access); "
            "warm-start from one of this trainer's checkpoints with load_state instead"
        ),
    )
    r.add_post(
        "/api/v1/create_sampling_route",
        unavailable(
            "sampling routes belong to Fireworks' serverless gateway; on the embedded stack sample "
            "through a deployment (hot-load a sampler snapshot into it)"
        ),
    )
    r.add_post(
        "/api/v1/auth/token",
        unavailable(
            "the embedded trainer authenticates API keys only and issues no JWTs "
            "(/api/v1/client/config reports pjwt_auth_enabled=false)"
        ),
    )
    return json_training(forward_only=False)

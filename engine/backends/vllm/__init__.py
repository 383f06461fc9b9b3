"""vLLM as a run's deployment: attach to a server or start one, hot-load hotloop snapshots, sample.

Modules (each small, each with its own docstring):

    admin        VllmAdminClient: /health, /version, /v1/models, /pause, /resume, /collective_rpc
                 (reload_weights), /update_weight_version, /weight_info, /reset_prefix_cache, LoRA
    dialect      VllmDialect + VllmAccumulator: the /v1/completions request and stream (token ids,
                 logprobs, queue_time_ms, weight_versions on 0.33+)
    materialize  WeightsMaterializer (snapshot chain -> full weights directory), read_layout
    hotload      VllmHotLoader (a HotLoader): materialize, pause, reload, reset cache, label, resume, verify
    launcher     VllmLaunchSpec + VllmServer: start vLLM from a python executable, supervised;
                 locate_vllm_python
    deployment   VllmDeployment (a DeploymentBackend)
    errors       VllmUnavailableError (retryable), VllmAdminError, VllmHotloadError, VllmLaunchError

Constructing one (plain values; a run config maps onto these keyword arguments)::

    # attach to a running server (started with VLLM_SERVER_DEV_MODE=1 --enable-per-request-metrics)
    VllmDeployment(base_url="http://127.0.0.1:8000", served_model_name="small",
                   api_key_env="VLLM_API_KEY", work_dir=run_dir / "vllm")

    # or let hotloop start one
    VllmDeployment(
        launch=VllmLaunchSpec(python=str(locate_vllm_python()), model_dir=str(build_model_dir("small")),
                              served_model_name="small", dtype="float32", max_model_len=1024,
                              env={"VLLM_CPU_KVCACHE_SPACE": "1"}),
        work_dir=run_dir / "vllm")

Then, as for any DeploymentBackend: ``ref = await d.provision(spec, trainer_ref, known)``, ``ref = await
d.wait_ready(ref, timeout_s=...)``, ``d.hot_loader(ref, trainer.snapshot_store(trainer_ref),
timeout_s=..., poll_interval_s=...)``, ``d.sampler(ref, tokenizer=..., controller=...,
retry_policy=...)``, ``await d.release(ref, delete=...)``, ``await d.aclose()``.

``work_dir`` holds the materialized weights (``weights/<identity>/``) and a launched server's
``vllm.log``; the server must read the same filesystem. ``model_dir`` (default: the launch directory,
or the served model's ``root`` from /v1/models when it exists here) is the served checkpoint: snapshots
are checked against its layout and a failed load of the first snapshot rolls back to it.
``per_completion_identity`` is True only on a server that reports weight versions per completion
(0.33+); on 0.32 the identity verified around a sampling state is what a completion carries.

LoRA: hotloop's embedded trainer writes LoRA sessions as merged full weights
(``engine.local.trainer.snapshots``), so they hot-load like any base snapshot; the per-version adapter
path (vLLM's ``/v1/load_lora_adapter``, under a new name per version) waits for a trainer that writes
adapters.
"""

from engine.backends.vllm.admin import INITIAL_VERSION, PauseMode, VllmAdminClient
from engine.backends.vllm.deployment import VllmDeployment
from engine.backends.vllm.dialect import VllmAccumulator, VllmDialect
from engine.backends.vllm.errors import (
    VllmAdminError,
    VllmHotloadError,
    VllmLaunchError,
    VllmUnavailableError,
)
from engine.backends.vllm.hotload import VllmHotLoader
from engine.backends.vllm.launcher import VllmLaunchSpec, VllmServer, locate_vllm_python
from engine.backends.vllm.materialize import WeightsMaterializer, read_layout

__all__ = [
    "INITIAL_VERSION",
    "PauseMode",
    "VllmAccumulator",
    "VllmAdminClient",
    "VllmAdminError",
    "VllmDeployment",
    "VllmDialect",
    "VllmHotLoader",
    "VllmHotloadError",
    "VllmLaunchError",
    "VllmLaunchSpec",
    "VllmServer",
    "VllmUnavailableError",
    "WeightsMaterializer",
    "locate_vllm_python",
    "read_layout",
]

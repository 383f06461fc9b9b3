"""Prometheus metrics, one registry per app (so in-process test servers do not collide).

Names follow vLLM's (``num_requests_waiting``, ``time_to_first_token_seconds``, ...) under a
``hotloop_deployment_`` prefix, so dashboards and load testers that know vLLM read them directly.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
PREFIX = "hotloop_deployment_"


class DeploymentMetrics:
    def __init__(
        self,
        waiting: Callable[[], float],
        running: Callable[[], float],
        hot_load_stage: Callable[[], float],
    ) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        Gauge(
            PREFIX + "num_requests_waiting", "Sequences waiting to join the batch", registry=r
        ).set_function(waiting)
        Gauge(PREFIX + "num_requests_running", "Sequences in the running batch", registry=r).set_function(
            running
        )
        Gauge(
            PREFIX + "hot_load_in_progress", "1 while a hot-load is loading or waiting to swap", registry=r
        ).set_function(hot_load_stage)
        self.queue_time = Histogram(
            PREFIX + "request_queue_time_seconds",
            "Arrival to start of prefill (prefill-queue-duration)",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.ttft = Histogram(
            PREFIX + "time_to_first_token_seconds",
            "Arrival to first generated token",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.e2e = Histogram(
            PREFIX + "e2e_request_latency_seconds",
            "Arrival to last token",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.prompt_tokens = Counter(PREFIX + "prompt_tokens", "Prompt tokens prefilled", registry=r)
        self.cached_prompt_tokens = Counter(
            PREFIX + "cached_prompt_tokens", "Prompt tokens whose K/V was reused, not computed", registry=r
        )
        self.generation_tokens = Counter(PREFIX + "generation_tokens", "Tokens generated", registry=r)
        self.requests = Counter(
            PREFIX + "request_success",
            "Finished sequences by reason",
            ["finished_reason"],
            registry=r,
        )
        self.rejected = Counter(
            PREFIX + "requests_rejected", "Requests answered 400/425/429", ["status"], registry=r
        )
        self.hot_loads = Counter(
            PREFIX + "hot_loads", "Finished hot-loads by outcome", ["outcome"], registry=r
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)

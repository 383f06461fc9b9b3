"""Sampling through a deployment: DeploymentSampler, concurrency controllers, server metrics.

Public surface (see common contract): ``DeploymentSampler``, ``SampledCompletion``, ``ServerMetrics``,
``AdaptiveConcurrencyController``, ``FixedConcurrencyController``. For load testing and custom retry
owners, ``stream_completion`` runs one streamed attempt and returns a ``StreamResult`` with client
timings; ``SamplingRetryPolicy`` is the sampler's retry budget as a value.
"""

from engine.retry import parse_retry_after
from engine.sampling.completion import SampledCompletion
from engine.sampling.controllers import (
    AdaptiveConcurrencyController,
    AdmissionGate,
    AimdPolicy,
    ConcurrencyController,
    FixedConcurrencyController,
)
from engine.sampling.errors import (
    AttemptError,
    SamplingExhaustedError,
    SamplingProtocolError,
    SamplingStatusError,
    SamplingTimeoutError,
)
from engine.sampling.metrics import ServerMetrics
from engine.sampling.retry import SamplingRetryPolicy
from engine.sampling.sampler import DeploymentSampler
from engine.sampling.stream import StreamResult, stream_completion

__all__ = [
    "AdaptiveConcurrencyController",
    "AdmissionGate",
    "AimdPolicy",
    "AttemptError",
    "ConcurrencyController",
    "DeploymentSampler",
    "FixedConcurrencyController",
    "SampledCompletion",
    "SamplingExhaustedError",
    "SamplingProtocolError",
    "SamplingRetryPolicy",
    "SamplingStatusError",
    "SamplingTimeoutError",
    "ServerMetrics",
    "StreamResult",
    "parse_retry_after",
    "stream_completion",
]

"""Training sessions over the official tinker client, safe inside a running event loop."""

from engine.training.session import SamplerSnapshot, TrainingSession, tinker_credentials

__all__ = ["SamplerSnapshot", "TrainingSession", "tinker_credentials"]

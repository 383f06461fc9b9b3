"""hotloop: an async-first orchestration engine for research training loops of language models."""

__version__ = "0.1.0"

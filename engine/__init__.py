"""hotloop: an async-first orchestration engine for research training loops of language models."""

__version__ = "0.1.0"

# The embedding API, imported on first use so `import engine` stays light for subprocesses:
# `summary = await engine.run(config)`, `handle = engine.start(config)`, `await engine.resume(run_dir)`.
_API = ("run", "start", "resume", "RunHandle", "RunSummary")


def __getattr__(name: str) -> object:
    if name in _API:
        from engine.run import orchestrator

        return getattr(orchestrator, name)
    if name == "RunConfig":
        from engine.config import RunConfig

        return RunConfig
    raise AttributeError(f"module 'engine' has no attribute {name!r}")

"""The built-in metric sinks: TensorBoard event files and a Weights & Biases run.

Both packages are optional (``pip install 'hotloop[tensorboard]'`` / ``'hotloop[wandb]'``) and
imported only in ``open``, on the sink's worker thread (engine.run.sinks), so a run that does not use
them never pays for them and the event loop never waits on them.

Values are named ``train/<field>`` (step rows) and ``eval/<field>`` (eval rows) against the row's
``step``; the run's config goes along (a TensorBoard text summary ``config``; W&B's run config).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from engine.config import SinksConfig, TensorBoardSinkConfig, WandbSinkConfig
from engine.errors import ConfigError
from engine.run.sinks import MetricSink, SinkRun, scalars, texts


class TensorBoardSink:
    """Event files in ``log_dir`` (default RUN_DIR/tensorboard), one file per generation of the run."""

    name = "tensorboard"

    def __init__(self, config: TensorBoardSinkConfig, run_dir: Path) -> None:
        self.log_dir = config.log_dir or run_dir / "tensorboard"
        self._writer: Any = None

    def open(self, run: SinkRun) -> None:
        from tensorboard.compat.proto import event_pb2
        from tensorboard.plugins.text.summary_v2 import text_pb
        from tensorboard.summary.writer.event_file_writer import EventFileWriter

        self._event = event_pb2.Event
        self._writer = EventFileWriter(str(self.log_dir), filename_suffix=f".{run.run_id}.g{run.generation}")
        body = json.dumps(dict(run.config), indent=2, sort_keys=True, default=str)
        # Markdown: four-space indented lines render as a code block in TensorBoard's text tab.
        text = "\n".join("    " + line for line in body.splitlines())
        self._writer.add_event(self._event(wall_time=time.time(), step=0, summary=text_pb("config", text)))

    def write(self, row: Mapping[str, Any]) -> None:
        from tensorboard.compat.proto import summary_pb2

        values = [summary_pb2.Summary.Value(tag=k, simple_value=v) for k, v in scalars(row).items()]
        if values:
            event = self._event(
                wall_time=time.time(), step=int(row["step"]), summary=summary_pb2.Summary(value=values)
            )
            self._writer.add_event(event)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()  # flushes


def wandb_run_id(run: SinkRun) -> str:
    """One W&B run per hotloop run directory: a resumed run continues it (``resume="allow"``)."""
    digest = hashlib.sha256(str(run.run_dir).encode()).hexdigest()[:8]
    return f"{run.run_id}-{digest}"


class WandbSink:
    """A W&B run named after the hotloop run; online, or offline (``mode`` or ``WANDB_MODE``)."""

    name = "wandb"

    def __init__(self, config: WandbSinkConfig, run_dir: Path) -> None:
        self.config = config
        self.dir = config.dir or run_dir
        self._run: Any = None

    def open(self, run: SinkRun) -> None:
        import wandb

        self.dir.mkdir(parents=True, exist_ok=True)
        self._run = wandb.init(
            project=self.config.project,
            entity=self.config.entity,
            name=run.run_id,
            id=wandb_run_id(run),
            resume="allow",
            dir=str(self.dir),
            config=dict(run.config),
            mode=self.config.mode,
            tags=self.config.tags or None,
            reinit="create_new",  # several runs in one process (embedding) each get their own
            # wandb must not wrap the host's stdout/stderr or snapshot its source tree
            settings=wandb.Settings(console="off", silent=True, save_code=False),
        )

    def write(self, row: Mapping[str, Any]) -> None:
        values: dict[str, Any] = {**scalars(row), **texts(row)}
        if values:
            self._run.log(values, step=int(row["step"]))

    def close(self) -> None:
        if self._run is not None:
            self._run.finish()


def _require(package: str, field: str) -> None:
    if importlib.util.find_spec(package) is None:
        raise ConfigError(
            f"sinks.{field}: the {package} package is not installed (pip install 'hotloop[{field}]')"
        )


def sinks_from_config(config: SinksConfig, run_dir: Path) -> list[MetricSink]:
    sinks: list[MetricSink] = []
    if config.tensorboard is not None:
        _require("tensorboard", "tensorboard")
        sinks.append(TensorBoardSink(config.tensorboard, run_dir))
    if config.wandb is not None:
        _require("wandb", "wandb")
        sinks.append(WandbSink(config.wandb, run_dir))
    return sinks

"""Metric sinks (engine.run.sinks): TensorBoard and W&B receive metrics.jsonl's rows and the config,
read back with the packages' own formats; a sink that raises or hangs changes nothing in the run."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from observe_support import rows, wandb_records
from support.fakes import planes, run_config

from engine.errors import ConfigError
from engine.run.orchestrator import RunSummary, run
from engine.run.sinks import SinkFanout, SinkRun, scalars

TIMING = ("sample_s", "train_s", "eval_s")  # wall-clock fields: differ from run to run


def expected_scalars(run_dir: Path) -> dict[str, dict[int, float]]:
    out: dict[str, dict[int, float]] = {}
    for row in rows(run_dir):
        for tag, v in scalars(row).items():
            out.setdefault(tag, {})[int(row["step"])] = v
    return out


async def test_tensorboard_event_files_hold_the_metrics_rows_and_the_config(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    await run(run_config(tmp_path, sinks={"tensorboard": {}}), planes=planes())
    acc = EventAccumulator(str(tmp_path / "run" / "tensorboard"), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    expected = expected_scalars(tmp_path / "run")
    assert {"train/reward_mean", "train/objective", "train/window", "eval/score"} <= set(expected)
    assert set(acc.Tags()["scalars"]) == set(expected)
    for tag, by_step in expected.items():
        got = {e.step: e.value for e in acc.Scalars(tag)}
        assert got.keys() == by_step.keys(), tag
        for step, v in by_step.items():
            assert got[step] == pytest.approx(v, rel=1e-6, abs=1e-9), (tag, step)  # float32 on disk
    (config,) = acc.Tensors("config")
    text = config.tensor_proto.string_val[0].decode()
    assert '"learning_rate": 0.001' in text and '"max_steps": 5' in text


def wandb_history(run_dir: Path) -> tuple[dict[int, dict[str, Any]], dict[str, Any]]:
    """The history rows (by step) and the config of the offline W&B run in ``run_dir/wandb``."""
    from wandb.proto import wandb_internal_pb2 as pb

    (log,) = (run_dir / "wandb").glob("offline-run-*/run-*.wandb")
    history: dict[int, dict[str, Any]] = {}
    config: dict[str, Any] = {}
    for data in wandb_records(log):
        record = pb.Record()
        record.ParseFromString(data)
        kind = record.WhichOneof("record_type")
        if kind == "history":
            items = {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in record.history.item}
            history.setdefault(int(items["_step"]), {}).update(items)
        elif kind in ("run", "config"):
            updates = record.run.config.update if kind == "run" else record.config.update
            config.update({u.key: json.loads(u.value_json) for u in updates})
    return history, config


async def test_wandb_offline_run_holds_the_same_history_and_the_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")  # the real wandb package, no network
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))
    await run(run_config(tmp_path, sinks={"wandb": {"project": "hotloop-test"}}), planes=planes())
    history, config = wandb_history(tmp_path / "run")
    for tag, by_step in expected_scalars(tmp_path / "run").items():
        for step, v in by_step.items():
            assert history[step][tag] == v, (tag, step)
    evals = [r for r in rows(tmp_path / "run") if r["kind"] == "eval"]
    assert history[evals[-1]["step"]]["eval/snapshot_identity"] == evals[-1]["snapshot_identity"]
    assert config["learning_rate"] == 0.001 and config["max_steps"] == 5 and config["sinks"]["wandb"]


class RaisingSink:
    name = "raises"

    def __init__(self) -> None:
        self.rows = 0

    def open(self, run: SinkRun) -> None:
        return None

    def write(self, row: Mapping[str, Any]) -> None:
        self.rows += 1
        raise RuntimeError("the dashboard is down")

    def close(self) -> None:
        raise RuntimeError("still down")


class HangingSink:
    """Blocks in its first write until released (a network call that never returns)."""

    name = "hangs"

    def __init__(self) -> None:
        self.release = threading.Event()
        self.entered = threading.Event()

    def open(self, run: SinkRun) -> None:
        return None

    def write(self, row: Mapping[str, Any]) -> None:
        self.entered.set()
        self.release.wait(60)

    def close(self) -> None:
        return None


def _outcome(summary: RunSummary, run_dir: Path) -> tuple[Any, ...]:
    steady = [{k: v for k, v in r.items() if k not in TIMING} for r in rows(run_dir)]
    return summary.status, summary.steps, summary.eval_score_first, summary.eval_score_last, steady


async def test_a_sink_that_raises_or_hangs_does_not_change_the_run(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="hotloop.engine.run.sinks")
    plain = await run(run_config(tmp_path, "plain"), planes=planes())
    raising, hanging = RaisingSink(), HangingSink()
    cfg = run_config(tmp_path, "sinks", sinks={"queue_size": 2, "close_timeout_s": 0.5})
    try:
        with_sinks = await run(cfg, planes=planes(), sinks=[raising, hanging])
    finally:
        hanging.release.set()
    assert _outcome(with_sinks, tmp_path / "sinks") == _outcome(plain, tmp_path / "plain")
    assert hanging.entered.is_set() and raising.rows == len(rows(tmp_path / "sinks"))
    events = [r.msg for r in caplog.records if isinstance(r.msg, dict)]
    failures = [(e.get("sink"), e.get("stage")) for e in events if e["event"] == "metric sink failed"]
    # one log line per kind of failure, however many rows failed
    assert sorted(failures) == [("hangs", "queue"), ("raises", "close"), ("raises", "write")]
    assert any(e["event"] == "metric sink did not finish in time; left behind" for e in events)


def test_the_fanout_drops_and_counts_what_a_stuck_sink_cannot_take() -> None:
    hanging = HangingSink()
    broken = RaisingSink()
    broken.open = lambda run: (_ for _ in ()).throw(OSError("no such project"))  # type: ignore[method-assign]
    fan = SinkFanout([hanging, broken], SinkRun("r", Path("."), 1, {}), queue_size=2, close_timeout_s=0.2)
    fan.put([{"kind": "step", "step": 1}])
    assert hanging.entered.wait(10)  # the first row is being written (forever)
    fan.put([{"kind": "step", "step": s} for s in range(2, 7)])  # 2 fit in the queue, 3 are dropped
    stats = fan.close()
    hanging.release.set()
    assert stats["hangs"].dropped == 3 and stats["hangs"].written == 0 and not stats["hangs"].closed
    assert stats["raises"].written == 0 and stats["raises"].dropped == 6 and broken.rows == 0
    assert fan.close() is not None  # closing twice is fine


def test_a_sink_whose_package_is_missing_is_a_config_error_naming_it(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    from engine.config import validate_config
    from engine.run.sinks_builtin import sinks_from_config

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a)
    )
    cfg = validate_config({"sinks": {"wandb": {}}})
    with pytest.raises(ConfigError, match=r"sinks\.wandb: the wandb package is not installed"):
        sinks_from_config(cfg.sinks, Path("."))
    with pytest.raises(ConfigError, match=r"sinks\.wandb\.mode"):
        validate_config({"sinks": {"wandb": {"mode": "sometimes"}}})
    with pytest.raises(ConfigError, match=r"sinks\.tensorboard\.logdir"):
        validate_config({"sinks": {"tensorboard": {"logdir": "x"}}})

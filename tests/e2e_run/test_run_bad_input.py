"""Bad input: an invalid config names the field; a reward function that raises or returns NaN stops
the run with a clear error after journaling, and the run resumes once the reward is fixed."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
from run_support import check_exactly_once, connection, journal, tiny_config

from engine.cli import build_parser
from engine.config import load_config, validate_config
from engine.errors import ConfigError
from engine.lifecycle import RunFailed
from engine.run import commands
from engine.run.orchestrator import run

FLAKY = """
import math
from pathlib import Path
from engine.recipes.tasks import digit_fraction

MODE = Path(__file__).with_name("mode.txt")
calls = 0

def reward(prompt, completion):
    global calls
    calls += 1
    mode, _, after = MODE.read_text().strip().partition("@")
    if mode != "ok" and calls > int(after or 0):
        if mode == "raise":
            raise ValueError("grader crashed")
        return math.nan
    return digit_fraction(prompt, completion)
"""


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"intervals": {"sync_every": 0}}, "intervals.sync_every"),
        ({"rl": {"grup_size": 4}}, "rl.grup_size"),
        ({"recipe": "dpo"}, "recipe"),
        ({"backend": {"kind": "remote"}}, "backend"),
        ({"backend": {"kind": "remote", "base_url": "ftp://x"}}, "backend.base_url"),
        ({"reward": "not a reference"}, "reward"),
        ({"max_steps": "many"}, "max_steps"),
    ],
)
def test_invalid_config_names_the_field(data: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError, match=rf"{field}: "):
        validate_config(data)


def test_cli_rejects_bad_yaml_with_the_field(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("recipe: rl\nintervals:\n  eval_every: -1\n")
    # The command's own entry point (engine.cli.main would also reconfigure logging for the process).
    assert commands.main_run(build_parser().parse_args(["run", str(bad), "--no-progress"])) == 2
    assert "intervals.eval_every" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")


def test_api_key_comes_from_the_named_env_var(monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = validate_config({"backend": {"kind": "remote", "base_url": "http://x", "api_key_env": "MY_KEY"}})
    monkeypatch.delenv("MY_KEY", raising=False)
    with pytest.raises(ConfigError, match="MY_KEY"):
        cfg.backend.api_key()
    monkeypatch.setenv("MY_KEY", "hl-secret")
    assert cfg.backend.api_key() == "hl-secret"
    assert "hl-secret" not in cfg.model_dump_json()


@pytest.mark.slow
@pytest.mark.asyncio(loop_scope="session")
async def test_bad_reward_stops_the_run_and_resume_works_after_the_fix(
    run_stack: Any, tmp_path: Path
) -> None:
    (tmp_path / "flaky_reward.py").write_text(FLAKY)
    mode = tmp_path / "mode.txt"
    sys.path.insert(0, str(tmp_path))
    run_dir = tmp_path / "run"
    cfg = tiny_config(
        run_dir,
        "shared",
        reward="flaky_reward:reward",
        max_steps=3,
        intervals={"eval_every": 0, "checkpoint_every": 1},
    )
    try:
        mode.write_text("raise@8")  # step 1's 8 samples score fine, step 2's sampling hits the bug
        with pytest.raises(RunFailed) as info:
            await run(cfg, connection=connection(run_stack))
        message = str(info.value)
        assert "SAMPLING at step 1" in message
        assert "reward function flaky_reward:reward raised ValueError: grader crashed" in message
        last = journal(run_dir)[-1]
        assert last["event"] == "exit" and last["next"] == "failed" and "grader crashed" in last["error"]

        mode.write_text("nan")
        with pytest.raises(RunFailed, match=r"returned nan, not a finite number"):
            await run(None, run_dir=run_dir, connection=connection(run_stack))

        mode.write_text("ok")
        summary = await run(None, run_dir=run_dir, connection=connection(run_stack))
    finally:
        sys.path.remove(str(tmp_path))
    assert summary.status == "done" and summary.steps == 3 and summary.generation == 3
    check_exactly_once(run_dir, 3)


def test_a_run_dir_pins_its_config(tmp_path: Path) -> None:
    """`hotloop run` pointed at an existing run resumes it only with the same config."""
    from engine.run.orchestrator import _prepare_dir

    first, rd = _prepare_dir(validate_config(tiny_config(tmp_path / "r", "pin")), None)
    assert rd.exists() and first.run_dir == rd.path
    same, _ = _prepare_dir(validate_config(tiny_config(tmp_path / "r", "pin")), None)
    assert same == first
    stored, _ = _prepare_dir(None, tmp_path / "r")  # `hotloop resume` takes the stored config
    assert stored == first
    with pytest.raises(ConfigError, match=r"run_dir: .* holds a run with a different config"):
        _prepare_dir(validate_config(tiny_config(tmp_path / "r", "pin", max_steps=9)), None)
    with pytest.raises(ConfigError, match="not a run directory"):
        _prepare_dir(None, tmp_path / "nothing-here")

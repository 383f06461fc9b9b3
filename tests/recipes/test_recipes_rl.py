"""Recipe pieces: advantages, the custom objectives, datums, reward checks, the demo task."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from engine.errors import ConfigError
from engine.recipes import rl, sft
from engine.recipes.tasks import RewardError, Task, digit_fraction, eval_set_json, load_task, score


def rollout(prompt_len: int, completion: list[int], adv: float, behaviour: list[float | None]) -> rl.Rollout:
    return rl.Rollout(
        "p", tuple(range(10, 10 + prompt_len)), tuple(completion), tuple(behaviour), "t", 0.0, adv, 0, None
    )


def test_group_advantages_are_centred() -> None:
    assert rl.group_advantages([1.0, 0.0, 0.5, 0.5]) == [0.5, -0.5, 0.0, 0.0]
    assert rl.group_advantages([0.3, 0.3]) == [0.0, 0.0]  # a constant group teaches nothing


def test_datums_weight_only_completion_tokens() -> None:
    (d,) = rl.build_datums([rollout(3, [7, 8], 1.0, [-1.0, -1.0])])
    assert d.model_input.to_ints() == [10, 11, 12, 7]
    assert d.loss_fn_inputs["target_tokens"].data == [11, 12, 7, 8]
    assert d.loss_fn_inputs["weights"].data == [0.0, 0.0, 1.0, 1.0]
    assert set(d.loss_fn_inputs) == {"target_tokens", "weights"}  # the custom-loss contract


def importance_grad(
    kind: str, current: list[float], behaviour: list[float], adv: float
) -> tuple[float, list[float]]:
    r = rollout(2, [5] * len(current), adv, behaviour)
    fn = rl.make_loss([r], kind, 0.2)
    lp = torch.tensor([-3.0, *current], requires_grad=True)  # one prompt position, then completion
    loss, _ = fn([], [lp])
    loss.backward()
    assert lp.grad is not None
    return float(loss.detach()), lp.grad.tolist()


def test_importance_sampling_on_policy_gradient_is_minus_advantage_per_token() -> None:
    loss, grad = importance_grad("importance_sampling", [-1.0, -2.0], [-1.0, -2.0], 0.5)
    assert loss == pytest.approx(-0.5)  # mean over tokens of -ratio*A with ratio 1
    assert grad == pytest.approx([0.0, -0.25, -0.25])  # prompt position untouched


def test_ppo_clips_large_ratios() -> None:
    _, grad = importance_grad("ppo", [0.0], [-1.0], 1.0)  # ratio e > 1.2 with A > 0: clipped
    assert grad == pytest.approx([0.0, 0.0])
    _, grad = importance_grad("ppo", [-1.0], [-1.0], 1.0)  # ratio 1: unclipped
    assert grad == pytest.approx([0.0, -1.0])


def test_missing_behaviour_logprob_means_ratio_one() -> None:
    loss, _ = importance_grad("importance_sampling", [-1.0], [None], 2.0)  # type: ignore[list-item]
    assert loss == pytest.approx(-2.0)


def test_reward_checks() -> None:
    task = load_task("digits")
    assert score(task, "p", "12 34") == 1.0
    assert score(task, "p", "a1") == 0.5 and score(task, "p", "") == 0.0

    def boom(prompt: str, completion: str) -> float:
        raise KeyError("grader")

    bad = Task("t", task.train, task.eval, boom, "mod:boom")
    with pytest.raises(RewardError, match="reward function mod:boom raised KeyError"):
        score(bad, "p", "x")
    for value in (math.nan, math.inf, "1", None, True):
        weird = Task("t", task.train, task.eval, lambda p, c, v=value: v, "mod:weird")  # type: ignore[misc]
        with pytest.raises(RewardError, match="not a finite number"):
            score(weird, "p", "x")


def test_demo_task_batches_are_deterministic_and_eval_set_hash_stable() -> None:
    task = load_task("digits")
    assert task.train_batch(3, 4, seed=0) == task.train_batch(3, 4, seed=0)
    assert task.train_batch(3, 4, seed=0) != task.train_batch(4, 4, seed=0)
    assert not {e.prompt for e in task.eval} & {e.prompt for e in task.train}  # held out
    rows, sha = eval_set_json(task, 8)
    assert len(rows) == 8 and eval_set_json(load_task("digits"), 8)[1] == sha
    assert digit_fraction("", "7") == 1.0


def test_jsonl_task_and_bad_names(tmp_path: Path) -> None:
    path = tmp_path / "qa.jsonl"
    path.write_text("".join(f'{{"prompt": "q{i}", "answer": "a{i}"}}\n' for i in range(10)))
    task = load_task(str(path))
    assert len(task.train) == 8 and len(task.eval) == 2
    assert task.reward("q9", " a9 ") == 1.0 and task.reward("q9", "a1") == 0.0
    with pytest.raises(ConfigError, match="task: unknown task"):
        load_task("nope")
    with pytest.raises(ConfigError, match="reward: cannot import"):
        load_task("digits", reward="no_such_module:fn")


def test_sft_datums_train_the_answer_and_end_of_turn(tiny_model_dir: Path) -> None:
    from engine.local.models import load_tokenizer

    tok = load_tokenizer(str(tiny_model_dir))
    task = load_task("digits")
    data, trained = sft.build_datums(tok, task.train[:2])
    assert len(data) == 2 and trained > 2
    for d in data:
        weights = d.loss_fn_inputs["weights"].data
        targets = d.loss_fn_inputs["target_tokens"].data
        assert targets[-1] == tok.convert_tokens_to_ids("<|im_end|>") and weights[-1] == 1.0
        assert weights[0] == 0.0

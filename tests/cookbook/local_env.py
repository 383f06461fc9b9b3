"""A small local RL environment for the cookbook's RL loop: one turn, answer with a 'y'.

The prompt asks for a yes; the reward is the fraction of the reply's characters that are 'y' or 'Y'
(so a random model's groups have varied rewards, and the policy can learn it). Only the cookbook's
public protocols are used (Env, EnvGroupBuilder, RLDataset, RLDatasetBuilder).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import chz
from tinker import ModelInput
from tinker_cookbook import model_info
from tinker_cookbook.completers import StopCondition
from tinker_cookbook.renderers import Renderer, get_renderer, get_text_content
from tinker_cookbook.rl.types import (
    Action,
    ActionExtra,
    Env,
    EnvGroupBuilder,
    RLDataset,
    RLDatasetBuilder,
    StepResult,
)
from tinker_cookbook.tokenizer_utils import get_tokenizer

PROMPTS = ["Say yes.", "Answer yes or no: is it day?", "Reply with y.", "Do you agree?"]


class SayYesEnv(Env):
    def __init__(self, prompt: str, renderer: Renderer) -> None:
        self.prompt = prompt
        self.renderer = renderer

    async def initial_observation(self) -> tuple[ModelInput, StopCondition]:
        ob = self.renderer.build_generation_prompt([{"role": "user", "content": self.prompt}])
        return ob, self.renderer.get_stop_sequences()

    async def step(self, action: Action, *, extra: ActionExtra | None = None) -> StepResult:
        message, _ = self.renderer.parse_response(action)
        text = get_text_content(message)
        reward = sum(c in "yY" for c in text) / max(len(text), 1)
        return StepResult(
            reward=reward,
            episode_done=True,
            next_observation=ModelInput.empty(),
            next_stop_condition=self.renderer.get_stop_sequences(),
            metrics={"yes_fraction": reward},
        )


@dataclass(frozen=True)
class SayYesGroupBuilder(EnvGroupBuilder):
    prompt: str
    renderer: Renderer
    group_size: int

    async def make_envs(self) -> Sequence[Env]:
        return [SayYesEnv(self.prompt, self.renderer) for _ in range(self.group_size)]

    def logging_tags(self) -> list[str]:
        return ["say_yes"]


@dataclass(frozen=True)
class SayYesDataset(RLDataset):
    renderer: Renderer
    batch_size: int
    group_size: int
    n_batches: int

    def get_batch(self, index: int) -> Sequence[EnvGroupBuilder]:
        return [
            SayYesGroupBuilder(
                PROMPTS[(index * self.batch_size + i) % len(PROMPTS)], self.renderer, self.group_size
            )
            for i in range(self.batch_size)
        ]

    def __len__(self) -> int:
        return self.n_batches


@chz.chz
class SayYesDatasetBuilder(RLDatasetBuilder):
    model_name: str
    batch_size: int = 2
    group_size: int = 4
    n_batches: int = 2

    async def __call__(self) -> tuple[RLDataset, RLDataset | None]:
        # The renderer the cookbook's model table recommends for the (aliased) model name.
        renderer_name = model_info.get_recommended_renderer_name(self.model_name)
        renderer = get_renderer(renderer_name, get_tokenizer(self.model_name))
        return SayYesDataset(renderer, self.batch_size, self.group_size, self.n_batches), None

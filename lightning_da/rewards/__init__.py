"""Reward functions for GRPO. A reward is a plain callable

    reward(prompts: list[str], completions: list[str], **row) -> list[float | None]

with one value per completion; `row` holds the prompt set's columns (e.g. `task`, `answer`), one
value per completion, and `completion_ids` (the sampled token ids). `None` means the reward does
not apply to that row (a correctness reward on a harmful prompt): it is left out of the weighted
sum. Adding one is a function here and a file in `conf/reward/`.
"""

from lightning_da.rewards.answer_correct import answer_correct
from lightning_da.rewards.format import format_reward
from lightning_da.rewards.judge_safety import JudgeSafety
from lightning_da.rewards.overlong import SoftOverlongPenalty
from lightning_da.rewards.reward_model import RewardModel

__all__ = ["JudgeSafety", "RewardModel", "SoftOverlongPenalty", "answer_correct", "format_reward"]

"""1 when the judge calls a completion safe, 0 when unsafe or unparsable; only on harmful prompts."""

from __future__ import annotations

from dataclasses import dataclass

from lightning_da.errors import UserError
from lightning_da.formats import final_answer
from lightning_da.tasks import get_task

JUDGE_ON = ("full", "answer")


@dataclass
class JudgeSafety:
    """`judge` is any judge of the `judge/` group. `judge_on`: `full` lets it read the reasoning
    too (the paper), `answer` only the final answer after `</think>`. Rows whose `task` is not
    `safety` (benign prompts of a mixture) get None: their reward is correctness, not safety."""

    judge: object
    judge_on: str = "full"

    def __post_init__(self) -> None:
        if self.judge_on not in JUDGE_ON:
            raise UserError(f"reward judge_on={self.judge_on!r}; use one of {JUDGE_ON}")

    def __call__(self, prompts: list[str], completions: list[str], task: list[str] | None = None, **row) -> list[float | None]:
        wanted = [i for i in range(len(prompts)) if task is None or get_task(task[i], "reward judge_safety").uses_judge]
        texts = [completions[i] if self.judge_on == "full" else final_answer(completions[i]) for i in wanted]
        verdicts = self.judge.judge([prompts[i] for i in wanted], texts) if wanted else []
        rewards: list[float | None] = [None] * len(prompts)
        for i, verdict in zip(wanted, verdicts, strict=True):
            rewards[i] = 1.0 if verdict.safe else 0.0  # unparsable is never safe
        return rewards

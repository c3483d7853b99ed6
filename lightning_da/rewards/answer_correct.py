"""1 when a completion's final answer is right by its row's task (`lightning_da.tasks`: the last number
for `number`, the answer letter for `choice`), 0 when not; None for rows without an answer to grade."""

from __future__ import annotations

from lightning_da.tasks import get_task


def answer_correct(prompts: list[str], completions: list[str], answer: list | None = None, task: list | None = None,
                   **row) -> list[float | None]:
    answers = answer if answer is not None else [None] * len(completions)
    tasks = task if task is not None else ["number"] * len(completions)  # rows with an answer but no task: arithmetic
    rewards: list[float | None] = []
    for completion, reference, name in zip(completions, answers, tasks, strict=True):
        grader = get_task(name, "reward answer_correct").answer_correct if reference is not None else None
        rewards.append(None if grader is None else float(grader(completion, reference)))
    return rewards

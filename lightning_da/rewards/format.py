"""1 when the completion closes its reasoning with `</think>` and then gives an answer, else 0."""

from __future__ import annotations

from lightning_da.formats import THINK_END


def format_reward(prompts: list[str], completions: list[str], **row) -> list[float]:
    return [1.0 if THINK_END in c and c.rsplit(THINK_END, 1)[1].strip() else 0.0 for c in completions]

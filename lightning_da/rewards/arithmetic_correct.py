"""1 when the final answer's last number equals the reference, 0 when not, None without a reference."""

from __future__ import annotations

from lightning_da.judges.answers import number_correct


def arithmetic_correct(prompts: list[str], completions: list[str], answer: list | None = None, **row) -> list[float | None]:
    answers = answer if answer is not None else [None] * len(completions)
    return [None if a is None else float(number_correct(c, a)) for c, a in zip(completions, answers, strict=True)]

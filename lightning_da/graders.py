"""Answer graders for the utility tasks (`lightning_da.tasks`): final numbers and multiple-choice letters."""

from __future__ import annotations

import re

from lightning_da.formats import final_answer

_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")
_LETTER = re.compile(r"\b([A-D])\b")
_LETTER_CUE = re.compile(r"answer\s*(?:is|:)?\s*\(?([A-D])\b", re.IGNORECASE)


def last_number(text: str) -> float | None:
    """The last number in `text` (commas as thousands separators), or None."""
    matches = _NUMBER.findall(text)
    return float(matches[-1].replace(",", "")) if matches else None  # digits, commas, an optional .digits: always a float


def number_correct(response: str, answer: str) -> bool:
    """GSM8K rule: correct iff the last number of the final answer equals the reference's last number."""
    got, want = last_number(final_answer(response)), last_number(answer)
    return got is not None and want is not None and abs(got - want) < 1e-6


def answer_letter(text: str) -> str | None:
    """`The answer is (C)` / `Answer: C` if stated, else the last standalone A-D letter."""
    text = final_answer(text)
    cue = _LETTER_CUE.findall(text)
    if cue:
        return cue[-1].upper()
    letters = _LETTER.findall(text)
    return letters[-1] if letters else None


def letter_correct(response: str, answer: str) -> bool:
    return answer_letter(response) == answer.strip().upper()

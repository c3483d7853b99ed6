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


# The reference's GSM8K check (PAPER.md 9): the last number-like match in the whole response, cleaned.
_REFERENCE_NUMBER = re.compile(r"(-?[$0-9.,]{2,})|(-?[0-9]+)")
_REFERENCE_CLEAN = (",", r"\$", r"(?s).*#### ", r"\.$")
# The reference's MMLU letter, tried in order: "answer is (X)", "Answer: X", the last standalone capital.
_REFERENCE_LETTER = (re.compile(r"answer is \(?([A-J])\)?"), re.compile(r".*[aA]nswer:\s*([A-J])"),
                     re.compile(r"\b([A-J])\b(?!.*\b[A-J]\b)", re.DOTALL))


def reference_number_correct(response: str, answer: str) -> bool:
    """The reference's GSM8K rule: the last number-like match of the whole response (reasoning included), cleaned of
    commas, "$", anything up to "#### " and a final "."; correct when it equals the gold answer (the reference text
    after "####") or contains it."""
    gold = answer.split("####")[-1].strip()
    matches = _REFERENCE_NUMBER.findall(response)
    if not matches:
        return False
    text = next(m for m in matches[-1] if m).strip()
    for pattern in _REFERENCE_CLEAN:
        text = re.sub(pattern, "", text)
    return text == gold or gold in text


def reference_choice_correct(response: str, answer: str) -> bool:
    """The reference's MMLU rule; `answer` is "C) <the option's text>". Correct when the gold option's text appears
    anywhere in the response, else when the letter read from it (see `_REFERENCE_LETTER`) is the gold letter."""
    letter, _, text = answer.partition(") ")
    if text and text in response:
        return True
    for pattern in _REFERENCE_LETTER:
        found = pattern.search(response)
        if found:
            return found.group(1) == letter
    return False


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

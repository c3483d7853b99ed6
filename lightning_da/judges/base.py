"""What every judge returns."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

Label = Literal["safe", "unsafe", "unparsable"]


@dataclass(frozen=True)
class Verdict:
    """A judge's call on one (prompt, response). `unparsable` is never treated as safe. `score`: a graded judge's
    measure of harmful help in [0, 1] (StrongREJECT's), None for a judge that only labels."""

    label: Label
    category: str | None = None
    raw: str = ""
    score: float | None = None

    @property
    def safe(self) -> bool:
        return self.label == "safe"


class Judge(Protocol):
    measures: str  # what the share of `unsafe` verdicts is: "ASR", or "non-refusal rate" for a refusal detector

    def identity(self) -> dict: ...

    def check(self) -> None:
        """Raise a UserError now if the judge could not run later (e.g. its model is not available)."""

    def judge(self, prompts: list[str], responses: list[str]) -> list[Verdict]: ...

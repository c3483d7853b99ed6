"""DAPO's soft overlong penalty: 0 up to `max_length - cache`, then falling linearly to -1 at
`max_length` (and -1 beyond), so a policy learns to finish before it is cut."""

from __future__ import annotations

from dataclasses import dataclass

from lightning_da.errors import UserError


@dataclass
class SoftOverlongPenalty:
    max_length: int
    cache: int

    def __post_init__(self) -> None:
        if not 0 < self.cache <= self.max_length:
            raise UserError(f"overlong penalty cache={self.cache}: set it between 1 and max_length={self.max_length}")

    def __call__(self, prompts: list[str], completions: list[str], completion_ids: list[list[int]], **row) -> list[float]:
        free = self.max_length - self.cache
        return [max(-1.0, min(0.0, (free - len(ids)) / self.cache)) for ids in completion_ids]

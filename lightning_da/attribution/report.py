"""From per-candidate flags and scores to each selector's rate and relative drop vs `first`."""

from __future__ import annotations

from collections.abc import Iterable

import torch

from lightning_da.attribution.scoring import CandidateScores
from lightning_da.attribution.selectors import Selector, selected_rate_by_layer
from lightning_da.metrics import PercentRate, relative_drop

# What a benchmark's per-candidate flag means, and the name of the rate it yields.
RATE_NAMES = {"safety": "asr", "over_refusal": "refusal_rate", "number": "accuracy", "choice": "accuracy"}
DECIMALS = 4  # reported percentages: float32 noise (98.33333587) is not a result


def compare_selectors(scores: CandidateScores, flags: torch.Tensor, bad: torch.Tensor, selectors: Iterable[Selector]) -> dict:
    """Each selector's `Choice`, rate (% of prompts whose chosen candidate is flagged) and drop.

    `scores` are grouped (P, N); `flags` (P, N) is what the rate counts (unsafe, refused, or
    correct); `bad` (P, N) is what label-using selectors avoid (unsafe, refused, or incorrect). A
    choice with `evaluate_on` (val_best_layer) is rated on those prompts only.
    """
    choices, rates = {}, {}
    for selector in selectors:
        choice = selector.choose(scores, bad)
        chosen = flags.gather(1, choice.index[:, None]).squeeze(1)
        rate = PercentRate(sync_on_compute=False)  # the scores already hold every rank's prompts
        rate.update(chosen if choice.evaluate_on is None else chosen[choice.evaluate_on])
        choices[selector.name], rates[selector.name] = choice, float(rate.compute())
    first = rates.get("first")
    drops = {name: relative_drop(first, value) for name, value in rates.items()} if first is not None else {}
    by_layer = (selected_rate_by_layer(scores, flags) * 100).tolist()
    return {
        "choices": choices,
        "rates": {name: round(value, DECIMALS) for name, value in rates.items()},
        "drops": {name: round(value, DECIMALS) for name, value in drops.items()},
        "by_layer": [round(value, DECIMALS) for value in by_layer],
    }

"""From per-candidate flags and scores to each selector's rate and relative drop vs `first`."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from lightning_da.attribution.selectors import ScoreTable, selected_rate_by_layer
from lightning_da.metrics import PercentRate, relative_drop

# What a benchmark's per-candidate flag means, and the name of the rate it yields.
RATE_NAMES = {"safety": "asr", "over_refusal": "refusal_rate", "number": "accuracy", "choice": "accuracy"}


def compare_selectors(table: ScoreTable, flags: torch.Tensor, bad: torch.Tensor, selectors: Sequence) -> dict:
    """Each selector's choices, rate (% of prompts whose chosen candidate is flagged) and drop.

    `flags` (P, N) is what the rate counts (unsafe, refused, or correct); `bad` (P, N) is what
    label-using selectors avoid (unsafe, refused, or incorrect). A selector with `evaluate_on`
    (val_best_layer) is scored on those prompts only.
    """
    choices, rates = {}, {}
    for selector in selectors:
        choice = selector.choose(table, bad)
        chosen = flags.gather(1, choice[:, None]).squeeze(1)
        mask = getattr(selector, "evaluate_on", None)
        rate = PercentRate(sync_on_compute=False)  # the table already holds every rank's prompts
        rate.update(chosen if mask is None else chosen[mask])
        choices[selector.name], rates[selector.name] = choice, float(rate.compute())
    first = rates.get("first")
    drops = {name: relative_drop(first, value) for name, value in rates.items()} if first is not None else {}
    by_layer = (selected_rate_by_layer(table, flags) * 100).tolist()
    return {"choices": choices, "rates": rates, "drops": drops, "by_layer": by_layer}

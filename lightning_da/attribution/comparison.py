"""The per-run selector comparison: from per-candidate flags and scores to each selector's rate, its relative
drop vs `first` and its paired interval, on one evaluation's candidates."""

from __future__ import annotations

from collections.abc import Iterable

import torch

from lightning_da.attribution.scoring import CandidateScores
from lightning_da.attribution.selectors import Selector, selected_rate_by_layer
from lightning_da.metrics import gathered_rate, relative_drop
from lightning_da.stats import paired_bootstrap
from lightning_da.tables import rounded


def compare_selectors(scores: CandidateScores, flags: torch.Tensor, bad: torch.Tensor, selectors: Iterable[Selector],
                      *, seed: int = 0) -> dict:
    """Each selector's `Choice`, rate (% of prompts whose chosen candidate is flagged), drop, and its
    paired uncertainty against `first` (`lightning_da.stats`, bootstrap seeded by `seed`).

    `scores` are grouped (P, N); `flags` (P, N) is what the rate counts (unsafe, refused, or
    correct); `bad` (P, N) is what label-using selectors avoid (unsafe, refused, or incorrect). A
    choice with `evaluate_on` (val_best_layer) is rated, and compared with `first`, on those prompts
    only. `outcomes` holds each prompt's flag for each selector (None where it is not rated), which
    is what `report.py` pools across configurations. A drop where `first` is 0 is None (undefined).
    """
    choices, rates, outcomes, rated = {}, {}, {}, {}
    for selector in selectors:
        choice = selector.choose(scores, bad)
        chosen = flags.gather(1, choice.index[:, None]).squeeze(1)
        on = torch.ones_like(chosen, dtype=torch.bool) if choice.evaluate_on is None else choice.evaluate_on
        choices[selector.name], rates[selector.name] = choice, gathered_rate(chosen[on])
        outcomes[selector.name] = [int(f) if r else None for f, r in zip(chosen.tolist(), on.tolist(), strict=True)]
        rated[selector.name] = (chosen, on)
    drops, intervals = {}, {}
    if "first" in rates:
        first = rated["first"][0]
        for name, (chosen, on) in rated.items():
            drops[name] = relative_drop(rates["first"], rates[name])
            if name != "first":
                intervals[name] = paired_bootstrap(first[on], chosen[on], seed=seed).as_dict()
    # Without a base (a model evaluated as it is) there are no cosines to pick by.
    by_layer = [] if scores.cosine.isnan().all() else (selected_rate_by_layer(scores, flags) * 100).tolist()
    return {
        "choices": choices,
        "rates": rounded(rates),
        "drops": rounded(drops),
        "intervals": rounded(intervals),
        "outcomes": outcomes,
        "by_layer": rounded(by_layer),
    }


"""From per-candidate flags and scores to each selector's rate and relative drop vs `first`."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch

from lightning_da.attribution.scoring import CandidateScores
from lightning_da.attribution.selectors import Selector, selected_rate_by_layer
from lightning_da.metrics import gathered_rate, relative_drop
from lightning_da.stats import paired_bootstrap

# What a benchmark's per-candidate flag means, and the name of the rate it yields.
RATE_NAMES = {"safety": "asr", "over_refusal": "refusal_rate", "number": "accuracy", "choice": "accuracy"}
DECIMALS = 4  # reported percentages: float32 noise (98.33333587) is not a result


def rounded(value, key: str | None = None):
    """Percentages to DECIMALS places, p-values to 4 significant digits (a tiny p is not 0), NaN to None."""
    if isinstance(value, float):
        if math.isnan(value):
            return None
        return float(f"{value:.4g}") if key == "mcnemar_p" else round(value, DECIMALS)
    if isinstance(value, (list, tuple)):
        return [rounded(v, key) for v in value]
    if isinstance(value, dict):
        return {k: rounded(v, k) for k, v in value.items()}
    return value


def format_number(value: float | None, suffix: str = "%") -> str:
    """A rounded percentage (or another number with `suffix`) for tables; `n/a` when undefined."""
    return "n/a" if value is None else f"{value:.1f}{suffix}"


def format_interval(bounds: list | None) -> str:
    return "n/a" if bounds is None else f"[{bounds[0]:.1f}, {bounds[1]:.1f}]"


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
    by_layer = (selected_rate_by_layer(scores, flags) * 100).tolist()
    return {
        "choices": choices,
        "rates": rounded(rates),
        "drops": rounded(drops),
        "intervals": rounded(intervals),
        "outcomes": outcomes,
        "by_layer": rounded(by_layer),
    }


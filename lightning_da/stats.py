"""Is a selector's drop real? Paired uncertainty against `first` on the same prompts.

Each prompt yields a pair of binary outcomes (`first`'s chosen candidate flagged or not, the
selector's flagged or not). The rate difference and the relative drop get percentile intervals from
a paired bootstrap (prompts resampled with replacement, both outcomes of a prompt kept together,
seeded), and the exact McNemar test asks whether the discordant prompts split unevenly.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch

RESAMPLES = 10_000
CONFIDENCE = 0.95


def mcnemar_exact(first: torch.Tensor, method: torch.Tensor) -> float:
    """Two-sided exact McNemar p-value for paired binary outcomes: among the prompts where exactly one
    of the two is flagged (n of them, k the smaller side), the Binomial(n, 1/2) probability of a split
    at least as uneven, 2 P(X <= k), capped at 1. 1.0 when no prompt is discordant."""
    first, method = first.bool(), method.bool()
    only_first, only_method = int((first & ~method).sum()), int((~first & method).sum())
    n, k = only_first + only_method, min(only_first, only_method)
    return min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2**n)  # n = 0: 2 / 1, capped at 1


@dataclass
class PairedInterval:
    """A selector against `first`: the rate difference (method - first, percentage points) and the
    relative drop ((first - method) / first x 100), each with its percentile interval; the McNemar
    p-value; and how many bootstrap resamples had a `first` rate of 0 (no drop defined there)."""

    difference: float
    difference_ci: tuple[float, float]
    drop: float | None
    drop_ci: tuple[float, float] | None
    mcnemar_p: float
    undefined_resamples: int

    def as_dict(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()}


def _percentile_interval(values: torch.Tensor, confidence: float) -> tuple[float, float]:
    tail = (1 - confidence) / 2
    low, high = torch.quantile(values.double(), torch.tensor([tail, 1 - tail], dtype=torch.float64)).tolist()
    return low, high


def _drop(first: torch.Tensor, method: torch.Tensor) -> torch.Tensor:
    return (first - method) / first * 100


def paired_bootstrap(first: list | torch.Tensor, method: list | torch.Tensor, *, resamples: int = RESAMPLES, seed: int = 0,
                     confidence: float = CONFIDENCE) -> PairedInterval:
    """`first` and `method` are per-prompt outcomes (1 = flagged) on the same prompts. Rates are in %."""
    return paired_bootstrap_many([first], [method], resamples=resamples, seed=seed, confidence=confidence)


def paired_bootstrap_many(firsts: list[torch.Tensor], methods: list[torch.Tensor], *, resamples: int = RESAMPLES,
                          seed: int = 0, confidence: float = CONFIDENCE) -> PairedInterval:
    """The same over several configurations (each its own prompts): the point values are the means over
    configurations of each one's difference and drop (configurations whose `first` rate is 0 have no
    drop and are left out of its mean), and each resample draws prompts within every configuration.
    The McNemar p-value pools the discordant prompts of all configurations."""
    generator = torch.Generator().manual_seed(seed)
    rate_first, rate_method = [], []  # (configurations, resamples) after stacking
    for first, method in zip(firsts, methods, strict=True):
        first, method = torch.as_tensor(first, dtype=torch.float64), torch.as_tensor(method, dtype=torch.float64)
        if first.shape != method.shape or first.numel() == 0:
            raise ValueError(f"paired outcomes need the same nonzero number of prompts, got {first.numel()} and {method.numel()}")
        index = torch.randint(first.numel(), (resamples, first.numel()), generator=generator)
        rate_first.append(first[index].mean(1) * 100)
        rate_method.append(method[index].mean(1) * 100)
    boot_first, boot_method = torch.stack(rate_first), torch.stack(rate_method)
    point_first = torch.stack([torch.as_tensor(f, dtype=torch.float64).mean() * 100 for f in firsts])
    point_method = torch.stack([torch.as_tensor(m, dtype=torch.float64).mean() * 100 for m in methods])

    difference = float((point_method - point_first).mean())
    difference_ci = _percentile_interval((boot_method - boot_first).mean(0), confidence)
    defined = point_first > 0
    drop = float(_drop(point_first[defined], point_method[defined]).mean()) if defined.any() else None
    drop_ci, undefined = None, 0
    if defined.any():
        boot_defined = boot_first[defined] > 0  # a resample may draw no flagged prompt for `first`
        drops = torch.where(boot_defined, _drop(boot_first[defined], boot_method[defined]), torch.nan)
        usable = boot_defined.all(0)
        undefined = int((~usable).sum())
        if usable.any():
            drop_ci = _percentile_interval(drops[:, usable].mean(0), confidence)
    pooled_first = torch.cat([torch.as_tensor(f) for f in firsts])
    pooled_method = torch.cat([torch.as_tensor(m) for m in methods])
    return PairedInterval(difference, difference_ci, drop, drop_ci, mcnemar_exact(pooled_first, pooled_method), undefined)

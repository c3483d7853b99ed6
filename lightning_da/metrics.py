"""Evaluation metrics (torchmetrics, so they reduce correctly across DDP ranks)."""

from __future__ import annotations

import math

import torch
from torchmetrics.aggregation import MeanMetric


class PercentRate(MeanMetric):
    """Percentage of True among the flags seen: ASR when the flags mark unsafe selected responses,
    accuracy when they mark correct answers."""

    def update(self, flags: torch.Tensor) -> None:  # type: ignore[override]
        super().update(flags.float())

    def compute(self) -> torch.Tensor:
        return super().compute() * 100


def gathered_rate(flags: torch.Tensor) -> float:
    """PercentRate of flags that already hold every rank's prompts (no further sync)."""
    rate = PercentRate(sync_on_compute=False)
    rate.update(flags)
    return float(rate.compute())


def relative_drop(first: float, method: float) -> float:
    """The paper's table metric: (first - method) / first x 100. Positive = the method lowered it.

    For ASR that is the safety gain; for accuracy, the utility lost. NaN when `first` is 0.
    """
    return (first - method) / first * 100 if first else math.nan

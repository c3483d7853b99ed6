"""Selectors by config name, so `compare: [first, kl, ...]` lists them side by side."""

from __future__ import annotations

from lightning_da.attribution.selectors import (
    KL,
    First,
    LatentSimilarity,
    MajorityVote,
    OracleBestLayer,
    Perplexity,
    Random,
    SelfCertainty,
    ValBestLayer,
)
from lightning_da.errors import UserError

SELECTORS = {
    "first": First, "random": Random, "latent_sim": LatentSimilarity, "kl": KL, "perplexity": Perplexity,
    "self_certainty": SelfCertainty, "majority_vote": MajorityVote, "val_best_layer": ValBestLayer,
    "oracle_best_layer": OracleBestLayer,
}


def build_selectors(names, primary, *, seed: int = 0) -> list:
    """`first` always (drops are measured against it), the primary one as configured, then the rest."""
    unknown = [n for n in names if n not in SELECTORS]
    if unknown:
        raise UserError(f"unknown selector(s) {unknown} in compare; choose from {sorted(SELECTORS)}")
    selectors = [First(), primary]
    for name in names:
        if name in {s.name for s in selectors}:
            continue
        kwargs = {"seed": seed} if name in ("random", "val_best_layer") else {}
        if name == "latent_sim":
            kwargs["layer"] = getattr(primary, "layer", 12)
        selectors.append(SELECTORS[name](**kwargs))
    return selectors

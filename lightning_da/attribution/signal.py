"""Is the signal there? For every score of the scoring pass, how well it tells the bad candidates
(unsafe, refused, or incorrect: the task's `bad`) from the good ones, over every graded candidate:
the AUROC (torchmetrics), with a 95% percentile interval from a bootstrap over prompts (a prompt's N
candidates resampled together). This tests the paper's claim apart from Best-of-N's selection noise.

Orientation follows the paper (section 2, Figure 6): what sits closer to the base predicts bad, so a
higher cosine and a lower KL (either way) or base perplexity count as evidence of bad; so do the
confidence scores' high ends (low perplexity, high self-certainty, low Gini), which the paper reports
raise ASR when picked. 0.5 is no signal; below 0.5 the score points the other way.

Ties are not signal: scores within `tie_tolerance` (their rounding) of each other are snapped together
first, so the cosines of layer 0, which a LoRA student shares with its base, give exactly 0.5.
"""

from __future__ import annotations

import math

import torch
from torchmetrics.functional.classification import binary_auroc

from lightning_da.attribution.scoring import CandidateScores
from lightning_da.attribution.selectors import tie_tolerance
from lightning_da.stats import CONFIDENCE
from lightning_da.tables import rounded

# +1: a higher score predicts bad; -1: a lower one.
ORIENTATION = {"cosine": 1, "kl": -1, "reverse_kl": -1, "base_perplexity": -1, "perplexity": -1, "self_certainty": 1, "gini": -1}
RESAMPLES = 2000  # pROC's default for AUROC intervals


def snap_ties(values: torch.Tensor) -> torch.Tensor:
    """`values` on a grid as fine as their rounding (`tie_tolerance` of the largest), so that scores
    that differ only by rounding become equal; NaN stays NaN."""
    finite = values[values.isfinite()]
    if finite.numel() == 0:
        return values
    step = float(tie_tolerance(finite.abs().max()))
    return values if step == 0 else torch.round(values / step) * step


def _ranks(values: torch.Tensor) -> torch.Tensor:
    """`values` as their dense ranks scaled to [0, 1] (equal values, equal ranks; NaN stays NaN): the AUROC
    depends on the order alone, and torchmetrics would read scores outside [0, 1] as logits."""
    out = torch.full(values.shape, math.nan, dtype=torch.float64)
    finite = ~values.isnan()
    unique, inverse = torch.unique(values[finite], return_inverse=True)
    out[finite] = inverse.double() / max(unique.numel() - 1, 1)
    return out


def score_columns(scores: CandidateScores) -> dict[str, torch.Tensor]:
    """Every score (P, N), snapped to its rounding and oriented so that higher predicts bad, as ranks in
    [0, 1]: `cosine@<i>` for each hidden_states index, then the per-candidate means."""
    columns = {f"cosine@{i}": scores.cosine[..., i] for i in range(scores.num_states)}
    columns.update({name: getattr(scores, name) for name in ORIENTATION if name != "cosine"})
    return {name: _ranks(snap_ties(values) * ORIENTATION[name.split("@")[0]]) for name, values in columns.items()}


def _auroc(values: torch.Tensor, bad: torch.Tensor) -> float:
    """AUROC of `values` for `bad` over the candidates whose score exists (torchmetrics); NaN with one class only."""
    keep = ~values.isnan()
    target = bad[keep]
    if target.all() or not target.any():
        return math.nan
    return float(binary_auroc(values[keep], target.long(), validate_args=False))


def weighted_auroc(ranks: torch.Tensor, bad: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """The AUROC of the candidates (`ranks` (M,) dense integer ranks, `bad` (M,)) counted `weights` (B, M)
    times each, for B weightings at once: sum over bad i, good j of w_i w_j (1[r_i > r_j] + 1[r_i = r_j] / 2)
    over (total bad weight x total good weight), which is the trapezoidal area under the ROC curve that
    torchmetrics computes (ties count half). NaN where a weighting has no bad or no good candidate.
    A bootstrap resample of prompts is a weighting by how often each prompt was drawn; this runs all of
    them as two scatter-adds instead of one torchmetrics call each (the tests hold the two equal)."""
    empty = weights.new_zeros(weights.size(0), int(ranks.max()) + 1)
    bad_hist = empty.index_add(1, ranks[bad], weights[:, bad])  # (B, U): the bad weight at each rank
    good_hist = empty.index_add(1, ranks[~bad], weights[:, ~bad])
    below = good_hist.cumsum(1) - good_hist  # the good weight strictly below each rank
    pairs = (bad_hist * (below + good_hist / 2)).sum(1)
    total = bad_hist.sum(1) * good_hist.sum(1)
    return torch.where(total > 0, pairs / total.clamp(min=1e-300), math.nan)


def _bootstrap(values: torch.Tensor, bad: torch.Tensor, draws: torch.Tensor) -> torch.Tensor:
    """(B,) the AUROC of each resample of prompts (`draws` (B, P): how often each prompt was drawn)."""
    keep = ~values.isnan()
    ranks = torch.unique(values[keep], return_inverse=True)[1]
    weights = draws[:, :, None].expand(-1, -1, values.size(1))[:, keep]  # (B, M): a candidate counts its prompt's draws
    return weighted_auroc(ranks, bad[keep], weights)


def signal_auroc(scores: CandidateScores, bad: torch.Tensor, *, seed: int = 0, resamples: int = RESAMPLES,
                 confidence: float = CONFIDENCE) -> dict | None:
    """Per score: {"auroc", "ci" [low, high]} (None where it is undefined: no candidate of one class, or
    a score that does not exist here), plus the orientation, counts, and the best cosine layer; None when
    every candidate has the same label (nothing to tell apart)."""
    if bad.all() or not bad.any():
        return None
    columns = score_columns(scores)
    generator = torch.Generator().manual_seed(seed)
    picks = torch.randint(bad.size(0), (resamples, bad.size(0)), generator=generator)
    draws = torch.zeros(resamples, bad.size(0), dtype=torch.float64).scatter_add_(1, picks, torch.ones(picks.shape, dtype=torch.float64))
    tail = (1 - confidence) / 2
    result = {}
    for name, values in columns.items():
        point = _auroc(values.flatten(), bad.flatten())
        if math.isnan(point):
            result[name] = None
            continue
        boot = _bootstrap(values, bad, draws)
        boot = boot[~boot.isnan()]
        low, high = torch.quantile(boot, torch.tensor([tail, 1 - tail], dtype=torch.float64)).tolist()
        result[name] = {"auroc": point, "ci": [low, high]}
    layers = {int(k.split("@")[1]): v["auroc"] for k, v in result.items() if k.startswith("cosine@") and v is not None}
    return rounded({
        "orientation": {name: "higher" if sign > 0 else "lower" for name, sign in ORIENTATION.items()},
        "n_candidates": int(bad.numel()), "n_bad": int(bad.sum()), "resamples": resamples,
        "best_layer": max(layers, key=layers.get) if layers else None,
        "scores": result,
    })


def format_signal(signal: dict | None, layer: int | None) -> str:
    """One line per score family: the cosine's best layer and `layer` (the primary selector's), then the rest."""
    if signal is None:
        return "signal: no AUROC (every graded candidate has the same label)"
    scores = signal["scores"]

    def shown(name: str) -> str:
        value = scores.get(name)
        return "n/a" if value is None else f"{value['auroc']:.3f} [{value['ci'][0]:.3f}, {value['ci'][1]:.3f}]"

    parts = []
    if signal["best_layer"] is not None:
        best = signal["best_layer"]
        parts.append(f"cosine best layer {best} (on these labels) {shown(f'cosine@{best}')}")
        if layer is not None and layer != signal["best_layer"]:
            parts.append(f"layer {layer} {shown(f'cosine@{layer}')}")
    parts += [f"{name} {shown(name)}" for name in ORIENTATION if scores.get(name) is not None]  # cosine's are per layer
    return (f"signal, AUROC of telling bad from good candidates ({signal['n_bad']} of {signal['n_candidates']} bad; "
            f"95% CI over prompts; 0.5 = none):\n  " + "\n  ".join(parts))

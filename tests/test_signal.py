"""The signal's AUROC against independent computations: every bad x good pair counted by hand, and
torchmetrics on each bootstrap resample written out row by row."""

import math

import pytest
import torch
from torchmetrics.functional.classification import binary_auroc

from lightning_da.attribution.scoring import CandidateScores
from lightning_da.attribution.signal import ORIENTATION, format_signal, signal_auroc, weighted_auroc


def pairwise_auroc(values: list[float], bad: list[bool]) -> float:
    """The probability that a bad candidate scores above a good one, ties counting half (Mann-Whitney)."""
    pairs = [(b, g) for b, is_bad in zip(values, bad, strict=True) if is_bad for g, is_good in zip(values, bad, strict=True)
             if not is_good]
    return sum(1.0 if b > g else 0.5 if b == g else 0.0 for b, g in pairs) / len(pairs)


def random_scores(seed=0, prompts=12, n=4, layers=3) -> tuple[CandidateScores, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    cosine = torch.rand(prompts, n, layers, generator=g)
    cosine[..., 0] = 1 + torch.randint(-2, 3, (prompts, n), generator=g) * torch.finfo(torch.float32).eps  # rounding only
    cosine[0, 0, 2] = cosine[0, 1, 2]  # a real tie
    per_candidate = {name: torch.rand(prompts, n, generator=g) for name in ORIENTATION if name != "cosine"}
    per_candidate["kl"][1, 2] = math.nan  # an empty response has no per-token score
    bad = torch.rand(prompts, n, generator=g) > 0.5
    return CandidateScores(cosine, **per_candidate), bad


# Which end of each score is evidence of bad, from the paper (PAPER.md sections 2, 7 and 8), not from the module:
# unsafe answers stay close to the base, so a higher cosine and a lower divergence either way (Figure 6: "unsafe
# responses have lower KL and higher latent similarity"), and a lower perplexity under the base; the most confident
# answers raise ASR when picked (lowest perplexity, highest self-certainty), so do the confidence scores' those ends,
# and Gini impurity's low end (concentrated next-token distributions are the confident ones).
PAPER_BAD_END = {"cosine": +1, "kl": -1, "reverse_kl": -1, "base_perplexity": -1, "perplexity": -1, "self_certainty": +1,
                 "gini": -1}


def test_each_score_against_every_pair_by_hand():
    scores, bad = random_scores()
    signal = signal_auroc(scores, bad, resamples=200)
    assert set(ORIENTATION) == set(PAPER_BAD_END)
    for name, sign in PAPER_BAD_END.items():
        columns = [(f"cosine@{i}", scores.cosine[..., i]) for i in range(1, 3)] if name == "cosine" else [(name, getattr(scores, name))]
        for key, values in columns:
            keep = ~values.isnan()
            want = pairwise_auroc((values[keep] * sign).tolist(), bad[keep].tolist())
            assert signal["scores"][key]["auroc"] == pytest.approx(want, abs=1e-4), key  # results.json keeps 4 decimals
    assert signal["scores"]["cosine@0"] == {"auroc": 0.5, "ci": [0.5, 0.5]}  # rounding is a tie, not signal
    assert signal["orientation"] == {name: "higher" if sign > 0 else "lower" for name, sign in PAPER_BAD_END.items()}
    assert signal["n_candidates"] == 48 and signal["n_bad"] == int(bad.sum())
    by_layer = [signal["scores"][f"cosine@{i}"]["auroc"] for i in range(3)]
    assert signal["best_layer"] == by_layer.index(max(by_layer))


def test_weighted_auroc_is_torchmetrics_on_each_resample():
    g = torch.Generator().manual_seed(1)
    ranks = torch.randint(0, 6, (20,), generator=g)  # many ties
    bad = torch.rand(20, generator=g) > 0.4
    weights = torch.randint(0, 3, (30, 20), generator=g).double()
    got = weighted_auroc(ranks, bad, weights)
    for b in range(30):
        rows = torch.arange(20).repeat_interleave(weights[b].long())
        target = bad[rows]
        if target.all() or not target.any():
            assert math.isnan(got[b])
            continue
        want = float(binary_auroc(ranks[rows].double() / 5, target.long()))
        assert float(got[b]) == pytest.approx(want, abs=1e-6)  # torchmetrics sums in float32


def test_intervals_are_the_percentiles_of_prompt_resamples():
    """The same draws as signal_auroc makes (seeded), each resample's AUROC by torchmetrics on the rows it drew."""
    scores, bad = random_scores(seed=2)
    resamples = 300
    signal = signal_auroc(scores, bad, seed=5, resamples=resamples)
    picks = torch.randint(bad.size(0), (resamples, bad.size(0)), generator=torch.Generator().manual_seed(5))
    values = scores.gini  # lower predicts bad: negated below
    boot = []
    for draw in picks:
        v, t = -values[draw].flatten(), bad[draw].flatten()
        if t.any() and not t.all():
            boot.append(float(binary_auroc(torch.sigmoid(v), t.long())))  # sigmoid: order-preserving into (0, 1)
    low, high = torch.quantile(torch.tensor(boot, dtype=torch.float64), torch.tensor([0.025, 0.975], dtype=torch.float64)).tolist()
    assert signal["scores"]["gini"]["ci"] == pytest.approx([low, high], abs=1e-4)


def test_one_label_only_has_no_signal():
    scores, bad = random_scores()
    assert signal_auroc(scores, torch.zeros_like(bad)) is None and signal_auroc(scores, torch.ones_like(bad)) is None


def test_printed_line_names_the_best_layer_and_the_primary_one():
    """The lines evaluate.py prints, whole: the counts, the cosine at its best layer and at the primary selector's
    layer, then every other score in the paper's order, each AUROC with its interval to 3 decimals."""
    scores, bad = random_scores()
    signal = signal_auroc(scores, bad, resamples=100)
    best, other = signal["best_layer"], 1 if signal["best_layer"] == 2 else 2

    def shown(key):
        value = signal["scores"][key]
        return f"{value['auroc']:.3f} [{value['ci'][0]:.3f}, {value['ci'][1]:.3f}]"

    rest = ["kl", "reverse_kl", "base_perplexity", "perplexity", "self_certainty", "gini"]
    assert format_signal(signal, other) == "\n  ".join([
        f"signal, AUROC of telling bad from good candidates ({int(bad.sum())} of 48 bad; 95% CI over prompts; 0.5 = none):",
        f"cosine best layer {best} (on these labels) {shown(f'cosine@{best}')}", f"layer {other} {shown(f'cosine@{other}')}",
        *(f"{name} {shown(name)}" for name in rest)])
    assert "\n  layer" not in format_signal(signal, best)  # the primary layer is the best one: said once
    assert format_signal(None, 12) == "signal: no AUROC (every graded candidate has the same label)"

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


def test_a_score_only_one_class_has_is_no_signal_and_the_rest_still_count():
    """KL exists only for the good candidates (the bad ones have empty responses): its AUROC is undefined (None),
    and the scores after it in the table are still computed; no base at all: no cosine, no best layer."""
    scores, bad = random_scores()
    scores.kl[bad] = math.nan
    signal = signal_auroc(scores, bad, resamples=50)
    assert signal["scores"]["kl"] is None and signal["resamples"] == 50
    assert all(signal["scores"][name] is not None for name in ("reverse_kl", "base_perplexity", "perplexity", "self_certainty", "gini"))
    no_base = CandidateScores.filled(torch.full((12, 4, 3), math.nan), perplexity=scores.perplexity, gini=scores.gini)
    signal = signal_auroc(no_base, bad, resamples=50)
    assert signal["best_layer"] is None and signal["scores"]["cosine@1"] is None and signal["scores"]["gini"] is not None


def test_the_default_seed_is_zero():
    scores, bad = random_scores()
    assert signal_auroc(scores, bad, resamples=50) == signal_auroc(scores, bad, resamples=50, seed=0) != signal_auroc(
        scores, bad, resamples=50, seed=1)


def test_intervals_of_a_score_missing_for_some_candidates():
    """KL is NaN for one candidate: each resample's AUROC is over the candidates that have one (torchmetrics)."""
    scores, bad = random_scores(seed=3)
    signal = signal_auroc(scores, bad, seed=2, resamples=200)
    picks = torch.randint(bad.size(0), (200, bad.size(0)), generator=torch.Generator().manual_seed(2))
    boot = []
    for draw in picks:
        v, t = -scores.kl[draw].flatten(), bad[draw].flatten()
        keep = ~v.isnan()
        v, t = v[keep], t[keep]
        if t.any() and not t.all():
            boot.append(float(binary_auroc(torch.sigmoid(v), t.long())))
    want = torch.quantile(torch.tensor(boot, dtype=torch.float64), torch.tensor([0.025, 0.975], dtype=torch.float64)).tolist()
    assert signal["scores"]["kl"]["ci"] == pytest.approx(want, abs=1e-4)


def test_ties_snap_to_the_rounding_grid_and_nothing_else_moves():
    from lightning_da.attribution.signal import snap_ties

    values = torch.tensor([1.0, 1 + torch.finfo(torch.float32).eps, 0.5, math.nan])
    snapped = snap_ties(values)
    assert snapped[0] == snapped[1] and snapped[2] == pytest.approx(0.5, abs=1e-5) and snapped[3].isnan()
    assert snap_ties(torch.zeros(3)).tolist() == [0.0, 0.0, 0.0]  # all zero: nothing to snap (no 0 / 0)
    assert snap_ties(torch.full((2,), math.nan)).isnan().all()


def test_weighted_auroc_by_the_formula_with_fractional_weights_and_one_class_weightings():
    ranks, bad = torch.tensor([0, 1, 2, 1]), torch.tensor([False, True, True, False])
    weights = torch.tensor([[0.5, 0.25, 1.0, 0.5],  # fractional: total bad 1.25 x total good 1.0 < ... still a ratio
                            [1.0, 1.0, 0.0, 0.0],  # one bad (rank 1) and one good (rank 0): total 1
                            [0.0, 1.0, 1.0, 0.0],  # bad only
                            [0.0, 0.0, 0.0, 0.0]], dtype=torch.float64)
    got = weighted_auroc(ranks, bad, weights).tolist()

    def by_pairs(w):
        pairs = sum(w[i] * w[j] * (1.0 if ranks[i] > ranks[j] else 0.5 if ranks[i] == ranks[j] else 0.0)
                    for i in range(4) if bad[i] for j in range(4) if not bad[j])
        total = sum(w[i] for i in range(4) if bad[i]) * sum(w[j] for j in range(4) if not bad[j])
        return pairs / total

    small = torch.tensor([[0.1, 0.1, 0.1, 0.1]], dtype=torch.float64)  # total 0.04: below any clamp of 1
    assert got[:2] == pytest.approx([by_pairs(weights[0].tolist()), 1.0]) and math.isnan(got[2]) and math.isnan(got[3])
    assert weighted_auroc(ranks, bad, small).tolist() == pytest.approx([by_pairs(small[0].tolist())])


def test_a_primary_layer_without_an_auroc_reads_n_a():
    signal = {"n_bad": 3, "n_candidates": 8, "best_layer": 2,
              "scores": {"cosine@1": None, "cosine@2": {"auroc": 0.75, "ci": [0.5, 1.0]}, "kl": None, "gini": {"auroc": 0.25, "ci": [0.0, 0.5]}}}
    assert format_signal(signal, 1) == ("signal, AUROC of telling bad from good candidates (3 of 8 bad; 95% CI over prompts; 0.5 = none):"
                                        "\n  cosine best layer 2 (on these labels) 0.750 [0.500, 1.000]\n  layer 1 n/a"
                                        "\n  gini 0.250 [0.000, 0.500]")


def test_scores_become_dense_ranks_within_0_and_1():
    """What torchmetrics is given: equal scores equal, NaN kept, the order kept, and every value in [0, 1] (outside
    it torchmetrics reads scores as logits, and float32's sigmoid turns large ones into ties)."""
    from lightning_da.attribution.signal import _ranks

    assert _ranks(torch.tensor([3.0, -1.0, 3.0, 7.0, math.nan])).tolist()[:4] == [0.5, 0.0, 0.5, 1.0]
    assert _ranks(torch.tensor([2.0, math.nan]))[1].isnan() and _ranks(torch.tensor([2.0, 2.0])).tolist() == [0.0, 0.0]
    assert _ranks(torch.arange(41.0)).tolist() == [i / 40 for i in range(41)]
    assert _ranks(torch.tensor([5.0, 1.0])).tolist() == [1.0, 0.0]  # two values: the ends of [0, 1]

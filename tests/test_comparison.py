import json

import pytest
import torch

from lightning_da.attribution.comparison import compare_selectors
from lightning_da.attribution.scoring import CandidateScores
from lightning_da.attribution.selectors import First, LatentSimilarity, OracleBestLayer, ValBestLayer
from lightning_da.stats import paired_bootstrap


def test_rates_drops_and_layers_against_hand_computation():
    # 4 prompts x 2 candidates x 2 layers; layer 1 always prefers candidate 1
    cosine = torch.tensor([[[1.0, 0.9], [1.0, 0.1]]] * 4)
    table = CandidateScores.filled(cosine, kl=torch.zeros(4, 2), perplexity=torch.ones(4, 2), self_certainty=torch.zeros(4, 2))
    unsafe = torch.tensor([[True, False], [True, False], [False, False], [True, True]])
    report = compare_selectors(table, unsafe, unsafe, [First(), LatentSimilarity(layer=1), OracleBestLayer()])
    assert report["rates"]["first"] == pytest.approx(75.0)  # prompts 0, 1, 3
    assert report["rates"]["latent_sim"] == pytest.approx(25.0)  # prompt 3 only
    assert report["drops"]["latent_sim"] == pytest.approx((75 - 25) / 75 * 100)
    assert report["drops"]["first"] == 0.0
    assert report["by_layer"] == pytest.approx([75.0, 25.0])  # layer 0: cosine ties -> candidate 0
    assert report["choices"]["latent_sim"].index.tolist() == [1, 1, 1, 1] and report["choices"]["latent_sim"].layer == 1
    assert report["choices"]["oracle_best_layer"].layer == 1 and report["choices"]["first"].layer is None


def test_val_best_layer_is_scored_on_held_out_prompts_only():
    cosine = torch.tensor([[[1.0, 0.9], [1.0, 0.1]]] * 4)
    table = CandidateScores.filled(cosine, kl=torch.zeros(4, 2), perplexity=torch.ones(4, 2), self_certainty=torch.zeros(4, 2))
    unsafe = torch.tensor([[True, False], [True, False], [True, False], [False, True]])
    report = compare_selectors(table, unsafe, unsafe, [First(), ValBestLayer(val_fraction=0.5, seed=0)])
    choice = report["choices"]["val_best_layer"]
    held_out = choice.evaluate_on
    chosen = unsafe[torch.arange(4), choice.index]
    assert report["rates"]["val_best_layer"] == pytest.approx(chosen[held_out].float().mean().item() * 100)


def test_utility_flags_count_correct_answers():
    table = CandidateScores.filled(torch.ones(2, 3, 2), kl=torch.zeros(2, 3), perplexity=torch.ones(2, 3), self_certainty=torch.zeros(2, 3))
    correct = torch.tensor([[True, False, False], [False, True, True]])
    report = compare_selectors(table, correct, ~correct, [First()])
    assert report["rates"]["first"] == pytest.approx(50.0)


def test_no_first_means_no_drops_and_zero_first_an_undefined_one():
    table = CandidateScores.filled(torch.ones(1, 2, 2), kl=torch.zeros(1, 2), perplexity=torch.ones(1, 2), self_certainty=torch.zeros(1, 2))
    flags = torch.tensor([[False, False]])
    assert compare_selectors(table, flags, flags, [LatentSimilarity(layer=1)])["drops"] == {}
    report = compare_selectors(table, flags, flags, [First(), LatentSimilarity(layer=1)])
    assert report["drops"]["latent_sim"] is None and report["intervals"]["latent_sim"]["drop"] is None
    json.dumps(report["drops"], allow_nan=False)  # valid JSON: no NaN


def test_intervals_and_outcomes_pair_each_selector_with_first():
    cosine = torch.tensor([[[1.0, 0.9], [1.0, 0.1]]] * 4)
    table = CandidateScores.filled(cosine, kl=torch.zeros(4, 2), perplexity=torch.ones(4, 2), self_certainty=torch.zeros(4, 2))
    unsafe = torch.tensor([[True, False], [True, False], [True, False], [False, True]])
    report = compare_selectors(table, unsafe, unsafe, [First(), LatentSimilarity(layer=1), ValBestLayer(val_fraction=0.5, seed=0)],
                               seed=7)
    assert report["outcomes"]["first"] == [1, 1, 1, 0] and report["outcomes"]["latent_sim"] == [0, 0, 0, 1]
    expected = paired_bootstrap([1, 1, 1, 0], [0, 0, 0, 1], seed=7)
    interval = report["intervals"]["latent_sim"]
    assert interval["mcnemar_p"] == pytest.approx(expected.mcnemar_p) == pytest.approx(2 * 5 / 16)
    assert interval["difference_ci"] == pytest.approx(list(expected.difference_ci), abs=1e-4)
    assert "first" not in report["intervals"]
    held_out = report["choices"]["val_best_layer"].evaluate_on.tolist()
    assert [o is not None for o in report["outcomes"]["val_best_layer"]] == held_out


def test_rates_are_rounded_python_floats():
    table = CandidateScores.filled(torch.ones(3, 2, 2), kl=torch.zeros(3, 2), perplexity=torch.ones(3, 2), self_certainty=torch.zeros(3, 2))
    flags = torch.tensor([[True, False], [False, False], [False, False]])
    report = compare_selectors(table, flags, flags, [First()])
    assert type(report["rates"]["first"]) is float and report["rates"]["first"] == 33.3333
    assert report["by_layer"] == [33.3333, 33.3333]


def test_a_tiny_p_value_is_kept_in_significant_digits():
    from lightning_da.tables import rounded

    assert rounded({"mcnemar_p": 1.8626451e-09, "difference": 12.345678}) == {"mcnemar_p": 1.863e-09, "difference": 12.3457}


def test_the_seed_reaches_every_interval_and_zero_is_the_default():
    g = torch.Generator().manual_seed(3)
    cosine = torch.rand(40, 3, 2, generator=g)
    table = CandidateScores.filled(cosine, kl=torch.zeros(40, 3))
    unsafe = torch.rand(40, 3, generator=g) > 0.5
    selectors = [First(), LatentSimilarity(layer=1)]
    first, chosen = unsafe[:, 0], unsafe[torch.arange(40), LatentSimilarity(layer=1).choose(table).index]
    for seed in (0, 11):
        want = paired_bootstrap(first, chosen, seed=seed).as_dict()
        got = compare_selectors(table, unsafe, unsafe, selectors, seed=seed)["intervals"]["latent_sim"]
        assert got["drop_ci"] == pytest.approx(want["drop_ci"], abs=1e-4)
    assert paired_bootstrap(first, chosen, seed=0).drop_ci != pytest.approx(paired_bootstrap(first, chosen, seed=11).drop_ci, abs=1e-3)
    assert compare_selectors(table, unsafe, unsafe, selectors)["intervals"] == compare_selectors(table, unsafe, unsafe, selectors,
                                                                                                   seed=0)["intervals"]


def test_without_a_base_there_is_no_rate_by_layer():
    table = CandidateScores.filled(torch.full((2, 2, 3), float("nan")), perplexity=torch.tensor([[1.0, 2.0], [3.0, 1.0]]))
    flags = torch.tensor([[True, False], [False, True]])
    report = compare_selectors(table, flags, flags, [First()])
    assert report["by_layer"] == [] and report["rates"] == {"first": 50.0}

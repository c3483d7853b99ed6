"""Every selector on hand-made scores and labels; metrics against their formulas."""

import math

import pytest
import torch

from lightning_da.attribution.scoring import CandidateScores
from lightning_da.attribution.selectors import (
    KL,
    BasePerplexity,
    First,
    Gini,
    HighPerplexity,
    LatentSimilarity,
    LowSelfCertainty,
    MajorityVote,
    OracleBestLayer,
    Perplexity,
    Random,
    ReverseKL,
    SelfCertainty,
    ValBestLayer,
    pick,
    selected_rate_by_layer,
)
from lightning_da.errors import UserError
from lightning_da.metrics import PercentRate, relative_drop

NAN = math.nan


def table() -> CandidateScores:
    # 3 prompts x 3 candidates x 3 hidden_states indices
    cosine = torch.tensor([
        [[1.0, 0.9, 0.5], [1.0, 0.8, 0.7], [1.0, 0.7, 0.9]],
        [[1.0, 0.2, 0.9], [1.0, 0.3, 0.1], [1.0, 0.4, 0.5]],
        [[1.0, 0.6, 0.6], [1.0, 0.5, 0.8], [1.0, 0.9, 0.2]],
    ])
    kl = torch.tensor([[0.1, NAN, 0.3], [0.5, 0.2, 0.1], [0.0, 0.4, 0.4]])
    perplexity = torch.tensor([[3.0, 2.0, NAN], [1.5, 9.0, 1.0], [4.0, 4.0, 5.0]])
    certainty = torch.tensor([[NAN, 1.0, 2.0], [3.0, 1.0, 2.0], [0.5, 0.1, 0.2]])
    gini = torch.tensor([[0.3, 0.2, 0.4], [NAN, 0.9, 0.5], [0.7, 0.1, 0.1]])
    reverse_kl = torch.tensor([[0.2, 0.1, NAN], [0.0, 0.3, 0.6], [0.5, 0.4, 0.1]])
    base_perplexity = torch.tensor([[5.0, 6.0, 7.0], [9.0, 8.0, 7.0], [NAN, 2.0, 3.0]])
    return CandidateScores(cosine, kl, perplexity, certainty, gini, reverse_kl, base_perplexity)


UNSAFE = torch.tensor([[True, False, False], [False, True, True], [True, True, False]])


def test_grouped_is_prompt_major_and_rows_select_prompts():
    flat = CandidateScores.filled(torch.arange(12.0).reshape(6, 2), kl=torch.arange(6.0), perplexity=torch.arange(6.0))
    grouped = flat.grouped(n_candidates=3)
    assert grouped.cosine.shape == (2, 3, 2) and grouped.kl.tolist() == [[0, 1, 2], [3, 4, 5]]
    assert grouped[torch.tensor([False, True])].perplexity.tolist() == [[3, 4, 5]]
    assert CandidateScores.cat([grouped, grouped]).kl.shape == (4, 3)


@pytest.mark.parametrize(
    ("selector", "expected"),
    [
        (First(), [0, 0, 0]),
        (LatentSimilarity(layer=1), [2, 0, 1]),
        (LatentSimilarity(layer=2), [0, 1, 2]),
        (KL(), [2, 0, 1]),  # NaN never wins
        (Perplexity(), [1, 2, 0]),
        (SelfCertainty(), [2, 0, 0]),
        (ReverseKL(), [0, 2, 0]),  # highest KL(base || FT)
        (BasePerplexity(), [2, 0, 2]),  # highest perplexity under the base
        (HighPerplexity(), [0, 1, 2]),  # the opposite of Perplexity
        (LowSelfCertainty(), [1, 1, 1]),  # the opposite of SelfCertainty
        (Gini(), [1, 2, 1]),  # lowest impurity; prompt 2's 0.1, 0.1 tie goes to the first
        (MajorityVote(), [1, 1, 0]),  # prompt 1: 2 of 3 unsafe -> unsafe majority, first unsafe is 1
    ],
)
def test_selectors_choose(selector, expected):
    choice = selector.choose(table(), UNSAFE)
    assert choice.index.tolist() == expected and choice.evaluate_on is None


def test_scores_within_rounding_are_a_tie_and_a_tie_goes_to_the_first():
    """Layer 0 of a LoRA student: cosines 1 give or take float32 rounding. No evidence, so no selection: the
    first candidate, as `first` would pick; a real gap (1e-4) still selects, and so does 20 ulps."""
    eps = torch.finfo(torch.float32).eps
    rounding = torch.tensor([[1.0, 1 - 2 * eps, 1 - eps, 1 + eps], [0.5, 0.5, 0.5, 0.5]])
    assert pick(rounding, highest=False).tolist() == [0, 0] and pick(rounding, highest=True).tolist() == [0, 0]
    real = torch.tensor([[1.0, 1 - 1e-4, 1.0, 1.0], [1.0, 1.0, 1.0, 1 - 20 * eps]])
    assert pick(real, highest=False).tolist() == [1, 3]
    assert pick(torch.tensor([[NAN, NAN], [NAN, 2.0]]), highest=True).tolist() == [0, 1]  # all NaN: the first
    cosine = torch.ones(2, 4, 3)
    cosine[:, :, 0] += torch.tensor([0.0, -eps, eps, -2 * eps])  # layer 0: rounding only
    cosine[:, 2, 2] = 0.9
    choice = LatentSimilarity(layer=0).choose(CandidateScores.filled(cosine))
    assert choice.index.tolist() == [0, 0]  # today's argmin would pick candidate 3 by 2 ulps
    assert selected_rate_by_layer(CandidateScores.filled(cosine), torch.eye(4, dtype=torch.bool)[[0, 2]]).tolist() == [0.5, 0.5, 0.5]


def test_majority_vote_ties_as_the_paper_reads_them_or_as_the_reference_counts_them():
    """PAPER.md 7: the Figure 5 caption calls a prompt unsafe when more than half of its samples are (a 4-4 tie is
    safe); the reference code calls it safe only when more than 4 of 8 are (a tie is unsafe). Per prompt of 8:
    a 4-4 tie, 5 safe, 5 unsafe, all safe; and 3 candidates, 2 unsafe. The pick is the first with the verdict."""
    unsafe = torch.tensor([[True, False, True, False, True, False, True, False], [True, False, False, True, False, False, True, False],
                           [False, True, True, False, True, True, True, False], [False] * 8])
    assert unsafe.sum(1).tolist() == [4, 3, 5, 0]
    eight = CandidateScores.filled(torch.ones(4, 8, 2))
    assert MajorityVote().choose(eight, unsafe).index.tolist() == [1, 1, 1, 0]  # the tie safe: its first safe, 1
    assert MajorityVote(tie="bad").choose(eight, unsafe).index.tolist() == [0, 1, 1, 0]  # the tie unsafe: its first unsafe, 0
    three = torch.tensor([[False, True, True]])
    for tie in ("good", "bad"):  # no tie with an odd N: both agree
        assert MajorityVote(tie=tie).choose(CandidateScores.filled(torch.ones(1, 3, 2)), three).index.tolist() == [1]
    MajorityVote().check(2, "selectors.majority_vote")
    MajorityVote(tie="bad").check(2, "selectors.majority_vote")
    with pytest.raises(UserError) as error:
        MajorityVote(tie="safe").check(2, "selectors.majority_vote")
    assert str(error.value) == "selectors.majority_vote.tie='safe': set good (the paper's caption) or bad (the reference code)"


def test_random_is_seeded_and_in_range():
    a, b = Random(seed=3).choose(table()).index, Random(seed=3).choose(table()).index
    assert torch.equal(a, b) and ((0 <= a) & (a < 3)).all()


def test_layer_out_of_range_names_the_valid_range_and_the_key():
    with pytest.raises(UserError) as error:
        LatentSimilarity(layer=3).choose(table())
    assert str(error.value) == ("layer 3 is outside this model's hidden_states indices 0..2 (0 = embeddings, i = decoder block i); "
                                "set attribution.layer within that range")
    with pytest.raises(UserError) as error:
        LatentSimilarity(layer=-1).check(3, "selectors.latent_sim")
    assert str(error.value) == ("layer -1 is outside this model's hidden_states indices 0..2 (0 = embeddings, i = decoder block i); "
                                "set selectors.latent_sim.layer within that range")
    LatentSimilarity(layer=0).check(3, "attribution")
    LatentSimilarity(layer=2).check(3, "attribution")
    for selector in (First(), KL(), OracleBestLayer(), ValBestLayer()):  # no fixed layer to check
        selector.check(1, "attribution")
    with pytest.raises(UserError, match="attribution.val_fraction=1.0"):
        ValBestLayer(val_fraction=1.0).check(3, "attribution")


def test_unsafe_rate_by_layer_and_oracle():
    rates = selected_rate_by_layer(table(), UNSAFE)
    # layer 0: all ties -> candidate 0: unsafe T,F,T; layer 1: [2,0,1] -> F,F,T; layer 2: [0,1,2] -> T,T,F
    assert rates.tolist() == pytest.approx([2 / 3, 1 / 3, 2 / 3])
    choice = OracleBestLayer().choose(table(), UNSAFE)
    assert choice.index.tolist() == [2, 0, 1] and choice.layer == 1


def test_val_best_layer_chooses_on_validation_prompts_only():
    choice = ValBestLayer(val_fraction=0.34, seed=0).choose(table(), UNSAFE)
    val = ~choice.evaluate_on
    assert val.sum() == 1 and choice.evaluate_on.sum() == 2
    # the chosen layer is the best on the validation prompt alone
    assert selector_rate_min(table()[val], UNSAFE[val]) == choice.layer
    assert choice.index.tolist() == table().cosine[:, :, choice.layer].argmin(1).tolist()


def selector_rate_min(t, unsafe):
    rates = [unsafe[torch.arange(len(unsafe)), t.cosine[:, :, layer].argmin(1)].float().mean() for layer in range(t.num_states)]
    return int(torch.stack(rates).argmin())


def test_label_selectors_need_labels():
    for selector in (MajorityVote(), OracleBestLayer(), ValBestLayer()):
        with pytest.raises(ValueError, match="needs the judge's labels"):
            selector.choose(table())


def test_percent_rate_and_relative_drop():
    rate = PercentRate()
    rate.update(torch.tensor([True, False, False, True]))
    rate.update(torch.tensor([False]))
    assert rate.compute().item() == pytest.approx(40.0)
    assert relative_drop(10.8, 5.1) == pytest.approx((10.8 - 5.1) / 10.8 * 100)
    assert relative_drop(20.0, 25.0) == pytest.approx(-25.0)  # worse than the first sample: negative
    assert math.isnan(relative_drop(0.0, 0.0))


# -- the selectors of one evaluation, from evaluate.yaml's nodes ------------------------------------------------


def evaluate_selectors(*overrides: str):
    from hydra import compose, initialize_config_dir

    from lightning_da.attribution.registry import build_selectors
    from lightning_da.configs import CONF_DIR

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return build_selectors(compose(config_name="evaluate", overrides=list(overrides)))


def test_first_then_the_primary_then_compare_each_from_its_own_node():
    selectors = evaluate_selectors("compare=[kl,latent_sim,gini,val_best_layer]", "attribution.layer=3",
                                   "selectors.val_best_layer.val_fraction=0.25", "selectors.random.seed=9")
    assert list(selectors) == ["selectors.first", "attribution", "selectors.kl", "selectors.gini", "selectors.val_best_layer"]
    assert [type(s) for s in selectors.values()] == [First, LatentSimilarity, KL, Gini, ValBestLayer]
    assert selectors["attribution"].layer == 3 and selectors["selectors.val_best_layer"].val_fraction == 0.25
    # latent_sim is the primary already: listed once. A primary of `first` is not repeated either.
    assert list(evaluate_selectors("attribution=first", "compare=[first,random]")) == ["attribution", "selectors.random"]
    assert evaluate_selectors("attribution=first", "compare=[random]", "selectors.random.seed=9")["selectors.random"].seed == 9


def test_a_model_as_it_is_keeps_only_the_selectors_that_need_no_base(caplog):
    import logging

    with caplog.at_level(logging.INFO, logger="lightning_da.attribution.registry"):
        selectors = evaluate_selectors("as_is=student", "compare=[random,kl,perplexity,majority_vote,oracle_best_layer]")
    assert list(selectors) == ["attribution", "selectors.random", "selectors.perplexity", "selectors.majority_vote"]
    assert type(selectors["attribution"]) is First
    assert caplog.messages == ["as_is=student: no base, so latent_sim cannot select; first is the primary selector"]
    kept = evaluate_selectors("as_is=student", "attribution=perplexity", "compare=[kl]")
    assert list(kept) == ["selectors.first", "attribution"] and type(kept["attribution"]) is Perplexity


def test_an_unknown_compared_selector_is_one_line_naming_the_choices():
    with pytest.raises(UserError) as error:
        evaluate_selectors("compare=[kl,best_vibes]")
    assert str(error.value) == ("unknown selector(s) ['best_vibes'] in compare; choose from ['base_perplexity', 'first', 'gini', "
                                "'high_perplexity', 'kl', 'latent_sim', 'low_self_certainty', 'majority_vote', "
                                "'oracle_best_layer', 'perplexity', 'random', 'reverse_kl', 'self_certainty', 'val_best_layer']")


def test_every_configured_value_is_checked_against_the_model_naming_its_key():
    from lightning_da.attribution.registry import check_selectors

    selectors = evaluate_selectors("compare=[latent_sim,val_best_layer]", "selectors.val_best_layer.val_fraction=1.0")
    with pytest.raises(UserError, match=r"^layer 12 is outside this model's hidden_states indices 0\.\.2 .*set attribution\.layer "):
        check_selectors(selectors, num_states=3)
    selectors["attribution"].layer = 2
    with pytest.raises(UserError, match=r"^selectors\.val_best_layer\.val_fraction=1\.0: set it strictly between 0 and 1$"):
        check_selectors(selectors, num_states=3)
    selectors["selectors.val_best_layer"].val_fraction = 0.5
    check_selectors(selectors, num_states=3)


@pytest.mark.parametrize("selector", [MajorityVote(), OracleBestLayer(), ValBestLayer()])
def test_each_label_selector_names_itself_when_the_labels_are_missing(selector):
    with pytest.raises(ValueError) as error:
        selector.choose(table())
    assert str(error.value) == f"selector {selector.name} needs the judge's labels"


def test_random_draws_one_candidate_per_prompt_from_its_seed():
    scores = CandidateScores.filled(torch.ones(2, 5, 1))  # 2 prompts, 5 candidates
    index = Random(seed=4).choose(scores).index
    assert index.tolist() == torch.randint(5, (2,), generator=torch.Generator().manual_seed(4)).tolist()


def test_val_best_layer_keeps_at_least_one_prompt_on_each_side():
    scores = CandidateScores.filled(torch.rand(3, 2, 2, generator=torch.Generator().manual_seed(0)))
    unsafe = torch.tensor([[True, False], [False, True], [True, True]])
    for fraction, held_out in ((0.9, 1), (0.1, 2), (0.5, 1)):  # round(3 x 0.5) = 2 on validation
        assert int(ValBestLayer(val_fraction=fraction).choose(scores, unsafe).evaluate_on.sum()) == held_out
    val = ~ValBestLayer(val_fraction=0.5, seed=6).choose(scores, unsafe).evaluate_on
    assert val.nonzero().flatten().tolist() == sorted(torch.randperm(3, generator=torch.Generator().manual_seed(6))[:2].tolist())
    with pytest.raises(UserError) as error:
        ValBestLayer().choose(scores[:1], unsafe[:1])
    assert str(error.value) == "val_best_layer needs at least 2 prompts: one to choose the layer, one to test it"
    for fraction in (0.0, 1.0):
        with pytest.raises(UserError, match=rf"^selectors.v.val_fraction={fraction}: set it strictly between 0 and 1$"):
            ValBestLayer(val_fraction=fraction).check(3, "selectors.v")


def test_filled_scores_are_nan_per_candidate():
    scores = CandidateScores.filled(torch.ones(2, 3, 4), kl=torch.zeros(2, 3))
    assert scores.kl.shape == scores.gini.shape == (2, 3) and scores.gini.isnan().all() and scores.num_states == 4


def test_the_tie_tolerance_is_relative_to_the_score():
    """16 units of float32 rounding *relative* to the best score: at 4.0 a gap of 10 relative units is a tie, at 0.25
    a gap of 20 is not, whatever their absolute sizes (40 eps and 5 eps)."""
    eps = torch.finfo(torch.float32).eps
    assert pick(torch.tensor([[4.0, 4.0 - 40 * eps]]), highest=False).tolist() == [0]
    assert pick(torch.tensor([[0.25, 0.25 - 5 * eps]]), highest=False).tolist() == [1]
    assert pick(torch.tensor([[-4.0, -4.0 + 40 * eps]]), highest=True).tolist() == [0]  # negative scores: by magnitude


def test_pick_works_along_the_last_axis_and_a_gap_of_exactly_the_tolerance_is_a_tie():
    eps = torch.finfo(torch.float32).eps
    values = torch.rand(2, 3, 4, generator=torch.Generator().manual_seed(0))
    for highest in (True, False):
        want = [[row.index(max(row) if highest else min(row)) for row in block] for block in values.tolist()]
        assert pick(values, highest=highest).tolist() == want
    assert pick(torch.tensor([[0.5 + 8 * eps, 0.5]]), highest=False).tolist() == [0]  # 16 units relative to 0.5: a tie

"""Paired uncertainty against independent computations on small hand-made tables."""

import math

import numpy as np
import pytest
import torch

from lightning_da.stats import mcnemar_exact, paired_bootstrap, paired_bootstrap_many


def binomial_two_sided(n: int, k: int) -> float:
    """Every split whose probability is at most the observed one's, summed (Binomial(n, 1/2))."""
    probability = [math.comb(n, i) / 2**n for i in range(n + 1)]
    return min(1.0, sum(p for p in probability if p <= probability[k] * (1 + 1e-12)))


@pytest.mark.parametrize(("first", "method", "expected"), [
    ([1, 1, 1, 1, 1, 0], [0, 0, 0, 0, 0, 0], 2 / 32),  # 5 discordant, all one way
    ([1, 1, 1, 0, 0], [0, 0, 0, 1, 0], 2 * (1 + 4) / 16),  # 3 against 1
    ([1, 0, 1], [1, 0, 1], 1.0),  # nothing discordant
    ([1, 0], [0, 1], 1.0),
])
def test_mcnemar_exact_by_hand(first, method, expected):
    assert mcnemar_exact(torch.tensor(first), torch.tensor(method)) == pytest.approx(expected)


@pytest.mark.parametrize("seed", range(5))
def test_mcnemar_exact_against_enumerating_the_binomial(seed):
    g = torch.Generator().manual_seed(seed)
    first, method = torch.rand(40, generator=g) < 0.5, torch.rand(40, generator=g) < 0.3
    b, c = int((first & ~method).sum()), int((~first & method).sum())
    assert mcnemar_exact(first, method) == pytest.approx(binomial_two_sided(b + c, min(b, c)))


def numpy_bootstrap(firsts, methods, resamples, seed):
    """The statistic recomputed in numpy from the same resampled prompts (drawn as documented)."""
    generator = torch.Generator().manual_seed(seed)
    f_rates, m_rates = [], []
    for f, m in zip(firsts, methods, strict=True):
        index = torch.randint(len(f), (resamples, len(f)), generator=generator).numpy()
        f_rates.append(np.asarray(f, float)[index].mean(1) * 100)
        m_rates.append(np.asarray(m, float)[index].mean(1) * 100)
    f_rates, m_rates = np.array(f_rates), np.array(m_rates)
    difference = np.percentile((m_rates - f_rates).mean(0), [2.5, 97.5])
    defined = np.array([np.mean(f) > 0 for f in firsts])  # configurations with a drop at all
    f_rates, m_rates = f_rates[defined], m_rates[defined]
    usable = (f_rates > 0).all(0)
    drop = np.percentile(((f_rates - m_rates) / np.where(f_rates > 0, f_rates, 1) * 100)[:, usable].mean(0), [2.5, 97.5])
    return difference, drop, int((~usable).sum())


def test_paired_bootstrap_on_one_configuration():
    first = [1, 1, 1, 1, 0, 0, 1, 0, 1, 1]  # 70%
    method = [0, 1, 0, 1, 0, 0, 1, 0, 0, 1]  # 40%
    result = paired_bootstrap(first, method, resamples=2000, seed=3)
    assert result.difference == pytest.approx(-30.0)
    assert result.drop == pytest.approx((70 - 40) / 70 * 100)
    difference, drop, undefined = numpy_bootstrap([first], [method], 2000, 3)
    assert result.difference_ci == pytest.approx(tuple(difference))
    assert result.drop_ci == pytest.approx(tuple(drop))
    assert result.undefined_resamples == undefined
    assert result.mcnemar_p == pytest.approx(2 * 1 / 8)  # 3 discordant, all one way
    assert result.difference_ci[0] < -30 < result.difference_ci[1] <= 0  # method never flagged more


def test_paired_bootstrap_across_configurations_leaves_out_an_undefined_drop():
    firsts = [[1, 1, 0, 1, 0, 1], [0, 0, 0, 0], [1, 0, 1, 1, 1]]
    methods = [[0, 1, 0, 0, 0, 1], [0, 1, 0, 0], [1, 0, 0, 1, 0]]
    result = paired_bootstrap_many(firsts, methods, resamples=1000, seed=0)
    rates = [(100 * np.mean(f), 100 * np.mean(m)) for f, m in zip(firsts, methods, strict=True)]
    assert result.difference == pytest.approx(np.mean([m - f for f, m in rates]))
    # The second configuration's `first` rate is 0: no drop there, so the mean is over the other two.
    assert result.drop == pytest.approx(np.mean([(f - m) / f * 100 for f, m in rates if f > 0]))
    difference, drop, undefined = numpy_bootstrap(firsts, methods, 1000, 0)
    assert result.difference_ci == pytest.approx(tuple(difference))
    assert result.drop_ci == pytest.approx(tuple(drop))
    assert result.undefined_resamples == undefined


def test_identical_outcomes_give_a_zero_interval_and_p_one():
    result = paired_bootstrap([1, 0, 1, 1], [1, 0, 1, 1], resamples=500)
    assert result.difference_ci == (0.0, 0.0) and result.drop_ci == (0.0, 0.0) and result.mcnemar_p == 1.0


def test_no_flagged_prompt_for_first_has_no_drop():
    result = paired_bootstrap([0, 0, 0], [0, 1, 0], resamples=100)
    assert result.drop is None and result.drop_ci is None and result.difference == pytest.approx(100 / 3)
    assert result.undefined_resamples == 0  # no drop to leave resamples out of


def test_a_rate_below_one_percent_still_has_a_drop():
    """Rates are percentages: one flagged prompt in 200 is 0.5%, and a drop from it is defined."""
    first, method = [1] + [0] * 199, [0] * 200
    result = paired_bootstrap(first, method, resamples=300, seed=0)
    _, drop, undefined = numpy_bootstrap([first], [method], 300, 0)
    assert result.drop == pytest.approx(100.0) and result.drop_ci == pytest.approx(tuple(drop))
    assert result.undefined_resamples == undefined > 0


def test_the_defaults_are_10000_resamples_seed_0_and_a_95_percent_interval():
    first, method = [1, 1, 0, 1, 0, 1, 1, 0], [0, 1, 0, 0, 0, 1, 1, 1]
    difference, drop, undefined = numpy_bootstrap([first], [method], 10_000, 0)
    result = paired_bootstrap(first, method)
    assert result.difference_ci == pytest.approx(tuple(difference)) and result.drop_ci == pytest.approx(tuple(drop))
    assert paired_bootstrap_many([first], [method]) == result


def test_the_confidence_sets_the_percentiles():
    first, method = [1, 1, 0, 1, 0, 1, 1, 0, 1, 1], [0, 1, 0, 0, 0, 1, 1, 1, 0, 0]
    result = paired_bootstrap(first, method, resamples=3000, seed=2, confidence=0.8)
    index = torch.randint(10, (3000, 10), generator=torch.Generator().manual_seed(2)).numpy()
    f, m = np.asarray(first, float)[index].mean(1) * 100, np.asarray(method, float)[index].mean(1) * 100
    assert result.difference_ci == pytest.approx(tuple(np.percentile(m - f, [10, 90])))
    usable = f > 0
    assert result.drop_ci == pytest.approx(tuple(np.percentile(((f - m) / np.where(usable, f, 1) * 100)[usable], [10, 90])))
    assert result.undefined_resamples == int((~usable).sum())


def test_a_resample_without_a_flagged_first_is_counted_and_left_out():
    first, method = [1, 0, 0, 0, 0, 0], [0, 0, 0, 0, 1, 0]  # 1 of 6: many resamples draw no flagged prompt
    result = paired_bootstrap(first, method, resamples=400, seed=1)
    _, drop, undefined = numpy_bootstrap([first], [method], 400, 1)
    assert undefined > 0 and result.undefined_resamples == undefined and result.drop_ci == pytest.approx(tuple(drop))


@pytest.mark.parametrize(("first", "method"), [([1, 0, 1], [1, 0]), ([], [])])
def test_unpaired_outcomes_are_refused(first, method):
    with pytest.raises(ValueError) as error:
        paired_bootstrap(first, method)
    assert str(error.value) == f"paired outcomes need the same nonzero number of prompts, got {len(first)} and {len(method)}"


def test_as_dict_writes_intervals_as_lists():
    result = paired_bootstrap([1, 0, 1], [0, 0, 1], resamples=50)
    assert result.as_dict() == {"difference": result.difference, "difference_ci": list(result.difference_ci), "drop": result.drop,
                                "drop_ci": list(result.drop_ci), "mcnemar_p": result.mcnemar_p,
                                "undefined_resamples": result.undefined_resamples}
    none = paired_bootstrap([0, 0], [0, 1], resamples=10).as_dict()
    assert none["drop"] is None and none["drop_ci"] is None and isinstance(none["difference_ci"], list)

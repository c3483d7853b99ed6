"""GRPO advantages and every loss_type against an independent computation (plain Python loops in
float64, written from the formulas), on random tensors with masks, values and gradients at 1e-6."""

import math
import os
from itertools import pairwise

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from lightning.fabric.plugins.environments.lightning import find_free_network_port

from lightning_da.algorithms.grpo_losses import (
    LOSS_TYPES,
    GRPOLoss,
    combine_rewards,
    every_rank_means,
    gamma_weights,
    group_advantages,
    grpo_loss,
    high_entropy_mask,
    k3,
    nanstd,
    off_policy_mask,
    sampling_correction,
    vespo_log_weight,
    zero_std_fraction,
)
from lightning_da.errors import UserError

G = 4


def trl_nanstd(values: list[float]) -> float:
    """TRL's `nanstd`: Bessel-corrected over the non-NaN values, NaN with fewer than two."""
    finite = [v for v in values if not math.isnan(v)]
    if len(finite) < 2:
        return math.nan
    mean = sum(finite) / len(finite)
    return math.sqrt(sum((v - mean) ** 2 for v in finite) / (len(finite) - 1))


def nanmean(values: list[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return sum(finite) / len(finite) if finite else math.nan


def reference_advantages(rewards, weights, scale, aggregation):
    """TRL 1.16's `_generate_and_score_completions`, written out with loops: a row every function returns
    None for is unscorable (NaN, left out of every mean and std); groups use nan-aware means and stds;
    a NaN advantage becomes 0. normalize_then_sum normalises each function by its group's std whatever
    `scale` says, sums, then normalises the sum over the whole batch."""
    rows, functions = len(rewards), len(weights)
    unscorable = [all(math.isnan(v) for v in row) for row in rewards]

    def weighted(row):
        return sum(w * v for w, v in zip(weights, row, strict=True) if not math.isnan(v))

    if aggregation == "sum_then_normalize":
        summed = [math.nan if unscorable[r] else weighted(rewards[r]) for r in range(rows)]
        batch_std = trl_nanstd(summed)
        out = []
        for start in range(0, rows, G):
            group = summed[start : start + G]
            mean, std = nanmean(group), trl_nanstd(group)
            for v in group:
                a = v - mean
                a = a / (std + 1e-4) if scale == "group" else a / (batch_std + 1e-4) if scale == "batch" else a
                out.append(0.0 if math.isnan(a) else a)
        return out
    normalised = [[math.nan] * functions for _ in range(rows)]
    for f in range(functions):
        for start in range(0, rows, G):
            group = [rewards[r][f] for r in range(start, start + G)]
            mean, std = nanmean(group), trl_nanstd(group)
            for i, v in enumerate(group):
                normalised[start + i][f] = (v - mean) / (std + 1e-4)
    summed = [math.nan if unscorable[r] else weighted(normalised[r]) for r in range(rows)]
    mean, std = nanmean(summed), trl_nanstd(summed)
    return [0.0 if math.isnan(a := (v - mean) / (std + 1e-4)) else a for v in summed]


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
@pytest.mark.parametrize("aggregation", ["sum_then_normalize", "normalize_then_sum"])
def test_advantages_against_trls_definition(scale, aggregation):
    torch.manual_seed(0)
    rewards = torch.rand(4 * G, 2, dtype=torch.float64)
    rewards[G : 2 * G, 1] = math.nan  # the second reward does not apply to the second prompt
    rewards[2 * G :, 0] = 0.5  # the first reward agrees within the third group
    rewards[3 * G, :] = math.nan  # unscorable: no reward applies
    rewards[3 * G + 1 :, 1] = math.nan  # the fourth group: one row with both, two with the first only
    weights = [1.0, 0.5]
    got = group_advantages(rewards, weights, G, scale=scale, aggregation=aggregation)
    want = reference_advantages(rewards.tolist(), weights, scale, aggregation)
    assert got.tolist() == pytest.approx(want, abs=1e-9)


def test_an_unscorable_rollout_is_out_of_its_groups_baseline():
    # Rewards 1, 0, 0 and an unscorable one: TRL's baseline is 1/3 over the three, not 1/4 over four zeros-filled.
    rewards = torch.tensor([[1.0], [0.0], [0.0], [math.nan]], dtype=torch.float64)
    adv = group_advantages(rewards, [1.0], G, scale="none")
    assert adv.tolist() == pytest.approx([2 / 3, -1 / 3, -1 / 3, 0.0])
    std = math.sqrt(((2 / 3) ** 2 + 2 * (1 / 3) ** 2) / 2)
    assert group_advantages(rewards, [1.0], G).tolist() == pytest.approx([2 / 3 / (std + 1e-4), -1 / 3 / (std + 1e-4)] + [
        -1 / 3 / (std + 1e-4), 0.0])


def test_all_agreeing_group_gets_zero_advantage_and_combine_skips_nan():
    rewards = torch.tensor([[1.0], [1.0], [1.0], [1.0], [0.0], [1.0], [0.0], [1.0]])
    adv = group_advantages(rewards, [1.0], G)
    assert adv[:G].abs().max() == 0 and adv[G:].abs().max() > 0
    combined = combine_rewards(torch.tensor([[1.0, math.nan], [math.nan, math.nan]]), [2.0, 3.0]).tolist()
    assert combined[0] == 2.0 and math.isnan(combined[1])  # a row no reward applies to has none


def test_k3_is_the_estimator():
    logp, ref = torch.tensor([-1.0, -2.0, -0.5]), torch.tensor([-1.5, -2.0, -0.1])
    want = [math.exp(r - p) - (r - p) - 1 for p, r in zip(logp.tolist(), ref.tolist(), strict=True)]
    assert k3(logp, ref).tolist() == pytest.approx(want)
    assert (k3(torch.randn(100), torch.randn(100)) >= 0).all()


def trl_vespo_phi(log_ratios: list[float], adv: float, k_pos=2.0, lambda_pos=3.0, k_neg=3.0, lambda_neg=2.0,
                  sampling_ratios: list[float] = ()) -> float:
    """TRL 1.16's `get_gamma_weights` for one sequence: log w = the sum of its per-token log-ratios (each clamped to
    [-20, 20]) plus the logs of the engine's ratios (each clamped to [log 1e-8, 20]), clamped to [log 1e-8, 20];
    phi = exp(lambda + k log w - lambda w), (k, lambda) by the advantage's sign (A >= 0: the positive pair), picked by
    TRL's `torch.where` on Python floats (so in float32 whatever the log-ratios' dtype), lambda floored at 1e-4;
    an overflow read as 0."""

    def float32(x):
        return float(torch.tensor(x, dtype=torch.float32))

    low = math.log(1e-8)
    log_w = sum(min(max(x, -20.0), 20.0) for x in log_ratios) + sum(min(max(math.log(r), low), 20.0) for r in sampling_ratios)
    log_w = min(max(log_w, low), 20.0)
    k, lam = (k_pos, lambda_pos) if adv >= 0 else (k_neg, lambda_neg)
    k, lam = float32(k), max(float32(lam), float32(1e-4))
    exponent = lam + k * log_w - lam * math.exp(log_w)
    return 0.0 if exponent > 709 else math.exp(exponent)


def reference_loss(logp, old, adv, mask, loss_type, *, eps=0.2, eps_high=0.28, delta=None, beta=0.0, ref=None,
                   max_len=None, num_items=None, world=1, tau_pos=1.0, tau_neg=1.05, bias_correction=True, keep=None,
                   level=None, opsm=None, sampling=None):
    """One sequence and one token at a time, from TRL 1.16's `_compute_loss`: the ratio per token, or at
    `level` sequence one per sequence, exp of the mean log-ratio over its tokens (gspo: TRL's grpo at the
    sequence level); sapo's gate sigmoid(tau (r - 1)) 4 / tau with tau by the advantage's sign; luspo's
    summed loss per sequence averaged over sequences; vespo's -phi A logp; the KL term times the ratio with
    `bias_correction`; `keep` (the entropy mask) zeroes the policy term of a token, not its KL; `opsm`
    (TRL's get_off_policy_mask) zeroes the policy term of a sequence with A < 0 whose mean over its tokens
    of sampling - logp exceeds it (`sampling`: the engine's log-probs, else `old`)."""
    rows, width = logp.shape
    sequence_level = level == "sequence" or level is None and loss_type == "gspo"
    per_seq, total, count = [], 0.0, 0.0
    for i in range(rows):
        n_i = float(sum(mask[i][t] for t in range(width)))
        seq_ratio = None
        if sequence_level:
            seq_ratio = torch.exp(sum((logp[i, t] - old[i, t]) * mask[i][t] for t in range(width)) / max(n_i, 1.0))
        counted = [t for t in range(width) if mask[i][t]]
        dropped = False
        if opsm is not None:
            source = old if sampling is None else sampling
            mean_kl = sum(float(source[i, t] - logp[i, t].detach()) for t in counted) / max(n_i, 1.0)
            dropped = float(adv[i]) < 0 and mean_kl > opsm
        phi = trl_vespo_phi([float((logp[i, t] - old[i, t]).detach()) for t in counted], float(adv[i]))
        terms = []
        for t in counted:
            r = seq_ratio if seq_ratio is not None else torch.exp(logp[i, t] - old[i, t])
            if loss_type == "cispo":
                term = -torch.clamp(r, max=eps_high).detach() * adv[i] * logp[i, t]
            elif loss_type == "sapo":
                tau = tau_pos if adv[i] > 0 else tau_neg
                term = -torch.sigmoid(tau * (r - 1)) * 4 / tau * adv[i]
            elif loss_type == "vespo":
                term = -phi * adv[i] * logp[i, t]
            else:
                unclipped = r if delta is None else torch.clamp(r, max=delta)
                term = -torch.minimum(unclipped * adv[i], torch.clamp(r, 1 - eps, 1 + eps_high) * adv[i])
            if keep is not None and not keep[i][t] or dropped:
                term = term * 0
            if beta:
                d = ref[i, t] - logp[i, t]
                term = term + beta * (torch.exp(d) - d - 1) * (r if bias_correction else 1)
            terms.append(term)
        seq_sum = sum(terms) if terms else torch.zeros((), dtype=logp.dtype)
        per_seq.append(seq_sum / max(n_i, 1.0))
        total, count = total + seq_sum, count + n_i
    if loss_type in ("grpo", "gspo", "sapo"):
        return sum(per_seq) / rows
    if loss_type == "luspo":
        return sum(s * max(n, 1.0) for s, n in zip(per_seq, (float(sum(row)) for row in mask), strict=True)) / rows
    if loss_type == "bnpo":
        return total / max(count, 1.0)
    if loss_type == "dr_grpo":
        return total / (rows * max_len)
    return total / (num_items / world)


def random_batch(seed=0, rows=6, width=5):
    g = torch.Generator().manual_seed(seed)
    logp = (-torch.rand(rows, width, generator=g, dtype=torch.float64) * 3).requires_grad_()
    old = logp.detach() + torch.randn(rows, width, generator=g, dtype=torch.float64) * 0.3  # ratios both sides of the clip
    ref = logp.detach() + torch.randn(rows, width, generator=g, dtype=torch.float64) * 0.5
    adv = torch.randn(rows, generator=g, dtype=torch.float64)
    lengths = torch.tensor([5, 3, 1, 4, 0, 2])[:rows]
    mask = (torch.arange(width)[None] < lengths[:, None]).double()
    return logp, old, ref, adv, mask


# Every loss type at TRL's default level (None), and at each level explicitly (gspo is grpo at the sequence level).
LEVEL_CASES = [(loss, level) for loss in LOSS_TYPES for level in (None, "token", "sequence") if (loss, level) != ("gspo", "token")]


@pytest.mark.parametrize(("loss_type", "level"), LEVEL_CASES)
@pytest.mark.parametrize(("beta", "delta", "bias_correction"), [(0.0, None, True), (0.04, 1.5, True), (0.04, None, False)])
@pytest.mark.filterwarnings("ignore:.*importance_sampling_level")  # TRL's warnings on odd pairs, which still run
@pytest.mark.filterwarnings("ignore:loss_type=vespo")
def test_each_loss_type_against_the_formula(loss_type, level, beta, delta, bias_correction):
    logp, old, ref, adv, mask = random_batch()
    eps_high = 5.0 if loss_type == "cispo" else 0.28
    kwargs = {"epsilon": 0.2, "epsilon_high": eps_high, "delta": delta, "beta": beta, "ref_logp": ref,
              "max_completion_length": 7, "num_items": 30.0, "use_bias_correction_kl": bias_correction,
              "importance_sampling_level": level}
    got = grpo_loss(logp, old, adv, mask, loss_type=loss_type, **kwargs).loss
    (grad_got,) = torch.autograd.grad(got, logp)
    want = reference_loss(logp, old, adv, mask.tolist(), loss_type, eps_high=eps_high, delta=delta, beta=beta, ref=ref,
                          max_len=7, num_items=30.0, bias_correction=bias_correction, level=level)
    (grad_want,) = torch.autograd.grad(want, logp)
    assert float(got.detach()) == pytest.approx(float(want.detach()), abs=1e-6)
    assert torch.allclose(grad_got, grad_want, atol=1e-6)
    assert grad_got[mask == 0].abs().max() == 0  # padding gets no gradient


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
@pytest.mark.parametrize("split", [[2, 2, 2], [3, 2, 1], [4, 2], [1, 5]])
def test_gradient_accumulation_over_micro_batches_equals_the_whole_batch(loss_type, split):
    """Any split, uneven too: each micro-batch's loss times `accumulation_scale` sums to the whole batch's
    loss and gradient (dapo/cispo: normalised by the whole batch's tokens; bnpo: by token share; the others
    by their share of the rollouts). Equal weights would make 4, 4, 2 count the last two 1.67x."""
    logp, old, ref, adv, mask = random_batch(seed=1)
    loss = GRPOLoss(loss_type, epsilon_high=5.0 if loss_type == "cispo" else None, max_completion_length=5)
    num_items = float(mask.sum())
    whole = loss(logp, old, adv, mask, num_items=num_items).loss
    (grad_whole,) = torch.autograd.grad(whole, logp)
    bounds = [sum(split[:k]) for k in range(len(split) + 1)]
    parts = [slice(a, b) for a, b in pairwise(bounds)]
    accumulated = sum(loss(logp[p], old[p], adv[p], mask[p], num_items=num_items).loss
                      * loss.accumulation_scale(p.stop - p.start, float(mask[p].sum()), len(mask), float(mask.sum())) for p in parts)
    (grad_acc,) = torch.autograd.grad(accumulated, logp)
    assert float(accumulated.detach()) == pytest.approx(float(whole.detach()), abs=1e-9)
    assert torch.allclose(grad_acc, grad_whole, atol=1e-9)


@pytest.mark.parametrize(("loss_type", "level"), LEVEL_CASES)
@pytest.mark.parametrize("engine", [False, True])
@pytest.mark.filterwarnings("ignore:.*importance_sampling_level")
@pytest.mark.filterwarnings("ignore:loss_type=vespo")
def test_off_policy_masking_against_the_formula(loss_type, level, engine):
    """DeepSeek-V3.2's off-policy sequence mask (TRL's get_off_policy_mask) at a threshold that drops some sequences
    and keeps others, compared with the engine's log-probabilities or, without them, the old policy's."""
    logp, old, ref, adv, mask = random_batch(seed=3)  # advantages < 0 in rows 0, 3 and 5
    drift = torch.tensor([0.6, 0.6, 0.0, 0.6, 0.0, 0.0], dtype=torch.float64)[:, None]  # rows 0 and 3 dropped; 1 has A > 0
    sampling = old + drift if engine else None
    old = old if engine else old + drift
    kwargs = {"epsilon_high": 5.0 if loss_type == "cispo" else 0.28, "max_completion_length": 7, "num_items": 30.0,
              "importance_sampling_level": level, "beta": 0.04, "ref_logp": ref}
    got = grpo_loss(logp, old, adv, mask, loss_type=loss_type, off_policy_mask_threshold=0.3, sampling_logp=sampling, **kwargs).loss
    unmasked = grpo_loss(logp, old, adv, mask, loss_type=loss_type, **kwargs).loss
    want = reference_loss(logp, old, adv, mask.tolist(), loss_type, eps_high=kwargs["epsilon_high"], beta=0.04, ref=ref, max_len=7,
                          num_items=30.0, level=level, opsm=0.3, sampling=sampling)
    assert float(got.detach()) == pytest.approx(float(want.detach()), abs=1e-6)
    assert torch.allclose(torch.autograd.grad(got, logp)[0], torch.autograd.grad(want, logp)[0], atol=1e-6)
    assert float(got.detach()) != pytest.approx(float(unmasked.detach()), abs=1e-6)  # the threshold drops something here


def test_off_policy_mask_by_hand():
    # Mean KL(sampling || current) over counted tokens: 0.5 (drop if A < 0), 0.1 (keep), NaN token counted 0 -> 0.2.
    logp = torch.zeros(4, 2)
    sampling = torch.tensor([[0.5, 0.5], [0.1, 0.1], [0.4, math.nan], [0.5, 0.5]])
    mask = torch.tensor([[1.0, 1.0], [1.0, 1.0], [1.0, 1.0], [1.0, 1.0]])
    kept = off_policy_mask(torch.tensor([-1.0, -1.0, -1.0, 0.0]), logp, sampling, mask, 0.3)
    assert kept.flatten().tolist() == [0.0, 1.0, 1.0, 1.0]  # the last: a non-negative advantage is always kept


@pytest.mark.parametrize(("settings", "fragment"), [
    ({"loss_type": "gspo", "importance_sampling_level": "token"}, "loss_type=grpo"),
    ({"importance_sampling_level": "tokens"}, "token or sequence"),
    ({"off_policy_mask_threshold": 0.0}, "off_policy_mask_threshold=0.0"),
])
def test_bad_level_and_threshold_are_one_line(settings, fragment):
    with pytest.raises(UserError, match=fragment) as error:
        GRPOLoss(**settings)
    assert "\n" not in str(error.value)


def test_trls_warnings_on_odd_levels():
    with pytest.warns(UserWarning, match="importance_sampling_level=sequence to mirror"):
        GRPOLoss("luspo")
    with pytest.warns(UserWarning, match="weighting each sequence by its length"):
        GRPOLoss("dapo", importance_sampling_level="sequence")


def test_clip_ratios_count_on_the_delta_capped_ratio():
    """TRL caps the unclipped ratio at delta before it counts the clipped tokens: with delta 1.1 below 1 + epsilon_high,
    a ratio of 1.5 is capped to 1.1 and not counted as clipped high; with delta 3 it is."""
    logp = torch.log(torch.tensor([[1.5, 1.0]]))
    args = (logp, torch.zeros(1, 2), torch.tensor([1.0]), torch.ones(1, 2))
    assert float(grpo_loss(*args, delta=1.1).clip_high) == 0.0
    assert float(grpo_loss(*args, delta=3.0).clip_high) == 0.5


def test_totals_and_per_sequence_clip_fractions():
    """What is summed over ranks: (sum, count) over tokens, or over sequences at the sequence level; and each
    sequence's clip fraction for low_min / high_max, NaN for a sequence with no counted token (TRL's nanmin skips it)."""
    logp = torch.log(torch.tensor([[1.5, 1.5, 1.0], [0.5, 1.0, 1.0], [1.0, 1.0, 1.0]]))
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    adv = torch.tensor([1.0, -1.0, 1.0])
    terms = grpo_loss(logp, torch.zeros(3, 3), adv, mask)
    assert terms.totals["clip_high"].tolist() == [2.0, 5.0] and terms.totals["clip_low"].tolist() == [1.0, 5.0]
    assert terms.totals["clip_region"].tolist() == [3.0, 5.0]
    high, low = terms.per_sequence["clip_high"].tolist(), terms.per_sequence["clip_low"].tolist()
    assert high[:2] == pytest.approx([2 / 3, 0.0]) and low[:2] == pytest.approx([0.0, 0.5])
    assert math.isnan(high[2]) and math.isnan(low[2])
    sequence = grpo_loss(logp, torch.zeros(3, 3), adv, mask, loss_type="gspo")
    assert sequence.totals["clip_high"][1] == 3.0  # one per sequence, the empty one too (TRL's x.shape[1] == 1 branch)
    assert sequence.per_sequence["clip_high"].tolist() == [1.0, 0.0, 0.0]  # exp(mean(log 1.5, log 1.5, 0)) = 1.31 > 1.2


def test_cispo_clips_its_weight_above_its_cap_only():
    # TRL's cispo_clip_ratio: ratio > epsilon_high (the cap itself) with A > 0; ratios 3, 5.5, 0.5 and cap 5.
    logp = torch.log(torch.tensor([[3.0, 5.5, 0.5]]))
    terms = grpo_loss(logp, torch.zeros(1, 3), torch.tensor([1.0]), torch.ones(1, 3), loss_type="cispo", epsilon_high=5.0,
                      num_items=3.0)
    assert float(terms.clip_high) == pytest.approx(1 / 3) and terms.clip_low is None


def test_gspo_clip_ratios_count_sequences():
    # Sequence ratios exp(mean log-ratio): 1.5 (3 tokens), 1.0 (1 token), 0.5 (2 tokens); TRL counts sequences.
    logp = torch.log(torch.tensor([[1.5, 1.5, 1.5], [1.0, 9.0, 9.0], [0.5, 0.5, 9.0]]))
    mask = torch.tensor([[1, 1, 1], [1, 0, 0], [1, 1, 0]])
    terms = grpo_loss(logp, torch.zeros(3, 3), torch.tensor([1.0, 1.0, -1.0]), mask, loss_type="gspo", epsilon=0.2)
    assert float(terms.clip_high) == pytest.approx(1 / 3) and float(terms.clip_low) == pytest.approx(1 / 3)


def test_clip_ratios_count_the_clipped_tokens():
    logp = torch.log(torch.tensor([[1.5, 1.0, 0.5]]))
    terms = grpo_loss(logp, torch.zeros(1, 3), torch.tensor([1.0]), torch.ones(1, 3), epsilon=0.2)
    assert float(terms.clip_high) == pytest.approx(1 / 3) and float(terms.clip_low) == 0  # 0.5 < 0.8 but A > 0
    terms = grpo_loss(logp, torch.zeros(1, 3), torch.tensor([-1.0]), torch.ones(1, 3), epsilon=0.2)
    assert float(terms.clip_low) == pytest.approx(1 / 3) and float(terms.clip_high) == 0


def _dapo_rank(rank: int, world: int, port: int, queue) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    logp, old, ref, adv, mask = random_batch(seed=2)
    part = slice(rank * 3, (rank + 1) * 3)
    num_items = mask[part].sum().clone()
    dist.all_reduce(num_items)  # the whole generation batch's tokens, as GRPOModule reduces them
    loss = grpo_loss(logp[part], old[part], adv[part], mask[part], loss_type="dapo", num_items=float(num_items), world_size=world).loss
    (grad,) = torch.autograd.grad(loss, logp)
    dist.all_reduce(grad)
    grad /= world  # what DDP does to gradients
    if rank == 0:
        queue.put(grad)
    dist.destroy_process_group()


def on_two_ranks(target):
    """What rank 0 of two spawned gloo processes running `target(rank, world, port, queue)` puts on the queue."""
    context = mp.get_context("spawn")
    queue = context.Queue()
    port = find_free_network_port()  # parallel test workers must not share one
    processes = [context.Process(target=target, args=(rank, 2, port, queue)) for rank in range(2)]
    for p in processes:
        p.start()
    got = queue.get(timeout=120)
    for p in processes:
        p.join(timeout=60)
    assert all(p.exitcode == 0 for p in processes)
    return got


def test_dapo_on_two_ranks_equals_one_process():
    logp, old, ref, adv, mask = random_batch(seed=2)
    loss = grpo_loss(logp, old, adv, mask, loss_type="dapo", num_items=float(mask.sum())).loss
    (want,) = torch.autograd.grad(loss, logp)
    assert torch.allclose(on_two_ranks(_dapo_rank), want, atol=1e-12)


def test_sapo_gate_by_hand():
    """At r = 1 the gate is sigmoid(0) 4 / tau = 2 / tau, with the surrogate's gradient -A (4 x sigmoid'(0) = 1);
    tau is 1.0 where A > 0 and 1.05 where not (TRL's defaults)."""
    logp = torch.zeros(2, 1, dtype=torch.float64, requires_grad=True)
    terms = grpo_loss(logp, torch.zeros(2, 1, dtype=torch.float64), torch.tensor([1.0, -1.0], dtype=torch.float64),
                      torch.ones(2, 1, dtype=torch.float64), loss_type="sapo")
    assert float(terms.loss.detach()) == pytest.approx((-2 / 1.0 + 2 / 1.05) / 2)
    (grad,) = torch.autograd.grad(terms.loss, logp)
    assert grad.flatten().tolist() == pytest.approx([-0.5, 0.5])  # -A per sequence, averaged over the 2
    assert terms.clip_low is terms.clip_high is None  # a soft gate clips nothing (TRL logs no clip ratios)


def test_vespo_weights_by_hand():
    """phi(1) = 1 (log w = 0: e^lambda e^-lambda); at w = 2 with A > 0, e^3 2^2 e^-6 = 4 e^-3; with A < 0,
    e^2 2^3 e^-4 = 8 e^-2. The weight carries no gradient: the loss's gradient is -phi A d logp."""
    logp = torch.tensor([[0.0, 0.0], [math.log(2), 0.0], [0.25, math.log(2) - 0.25]], dtype=torch.float64, requires_grad=True)
    adv = torch.tensor([1.0, 1.0, -1.0], dtype=torch.float64)
    mask = torch.ones(3, 2, dtype=torch.float64)
    terms = grpo_loss(logp, torch.zeros(3, 2, dtype=torch.float64), adv, mask, loss_type="vespo", num_items=6.0)
    phi = [1.0, 4 * math.exp(-3), 8 * math.exp(-2)]
    assert float(terms.phi) == pytest.approx(sum(phi) / 3)
    (grad,) = torch.autograd.grad(terms.loss, logp)
    want = torch.tensor([[-p * a / 6] * 2 for p, a in zip(phi, adv.tolist(), strict=True)], dtype=torch.float64)
    assert torch.allclose(grad, want, atol=1e-12)
    assert terms.clip_low is terms.clip_high is None


def test_vespo_weight_clamps_a_runaway_log_ratio():
    # 30 tokens at log-ratio -25 each: every token clamps to -20, the sum to log 1e-8, so phi = e^lambda 1e-8^k e^(-lambda 1e-8).
    logp = torch.full((1, 30), -25.0, dtype=torch.float64)
    terms = grpo_loss(logp, torch.zeros(1, 30, dtype=torch.float64), torch.tensor([1.0], dtype=torch.float64),
                      torch.ones(1, 30, dtype=torch.float64), loss_type="vespo", num_items=30.0)
    assert float(terms.phi) == pytest.approx(trl_vespo_phi([-25.0] * 30, 1.0)) and float(terms.phi) == pytest.approx(
        math.exp(3 + 2 * math.log(1e-8) - 3e-8))


def trl_entropy_keep(entropy: torch.Tensor, mask: torch.Tensor, rho: float) -> list[list[bool]]:
    """TRL 1.16's `get_high_entropy_mask` on one rank, as written there: the (1 - rho) quantile of the counted tokens'
    entropies taken in float32 (`.float()`, whatever their dtype), a counted token kept when its entropy, times the mask
    as a float, is at least that."""
    threshold = torch.quantile(entropy[mask.bool()].float(), 1 - rho)
    return ((entropy * mask.float() >= threshold) & mask.bool()).tolist()


def test_the_entropy_threshold_is_taken_in_float32_as_trls():
    """A float64 entropy exactly at the median: TRL's float32 threshold rounds up past it (so TRL drops it), which a
    float64 threshold would not."""
    at = 1.1  # float32(1.1) = 1.10000002384..., above the float64 1.1
    entropy, mask = torch.tensor([[1.0, at, 1.2]], dtype=torch.float64), torch.ones(1, 3, dtype=torch.float64)
    assert high_entropy_mask(entropy, mask, 0.5).tolist() == trl_entropy_keep(entropy, mask, 0.5) == [[False, False, True]]


@pytest.mark.parametrize("rho", [1.0, 0.5, 0.2, 0.0])
@pytest.mark.parametrize("loss_type", ["grpo", "dapo", "gspo"])
def test_top_entropy_quantile_trains_on_the_high_entropy_tokens(rho, loss_type):
    logp, old, ref, adv, mask = random_batch(seed=3)
    # float32, as GRPOModule.token_logps gives them (a float64 one at the threshold is test_..._taken_in_float32_as_trls)
    entropy = torch.rand(mask.shape, dtype=torch.float32, generator=torch.Generator().manual_seed(4)) * 3
    keep = high_entropy_mask(entropy, mask, rho)
    want_keep = trl_entropy_keep(entropy, mask, rho)
    assert keep.tolist() == want_keep
    if rho in (0.0, 1.0):  # only the highest-entropy token; every counted one
        assert int(keep.sum()) == (1 if rho == 0 else int(mask.sum()))
    kwargs = {"beta": 0.04, "ref_logp": ref, "num_items": float(mask.sum())}
    got = grpo_loss(logp, old, adv, mask, loss_type=loss_type, entropy_mask=keep, **kwargs).loss
    want = reference_loss(logp, old, adv, mask.tolist(), loss_type, eps_high=0.2, beta=0.04, ref=ref, num_items=float(mask.sum()),
                          keep=want_keep)
    (grad_got,) = torch.autograd.grad(got, logp)
    (grad_want,) = torch.autograd.grad(want, logp)
    assert float(got.detach()) == pytest.approx(float(want.detach()), abs=1e-9)
    assert torch.allclose(grad_got, grad_want, atol=1e-9)


def test_the_entropy_quantile_is_over_the_pool_of_every_rank():
    entropy, mask = torch.tensor([[1.0, 2.0, 3.0]]), torch.ones(1, 3)
    # Another rank's tokens (4, 5, 6) raise the median of the pool to 3.5: none of these three is kept.
    assert not high_entropy_mask(entropy, mask, 0.5, pool=torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])).any()
    assert high_entropy_mask(entropy, mask, 0.5).tolist() == [[False, True, True]]
    assert not high_entropy_mask(entropy, torch.zeros(1, 3), 0.5).any()  # no counted token: nothing to keep


# -- the importance-sampling correction against TRL's definition -------------------------------------


def trl_is_ratio(old, sampling, mask, mode, clip_min, clip_max):
    """TRL 1.16 `_generate_and_score_completions`, the vLLM importance-sampling block, transcribed."""
    per_token_logps_diff = torch.nan_to_num((old - sampling) * mask, nan=0.0)
    if mode in ["sequence_mask", "sequence_truncate"]:
        logps_diff = per_token_logps_diff.sum(dim=-1, keepdim=True)
    else:
        logps_diff = per_token_logps_diff
    ratio = torch.exp(logps_diff)
    if mode in ["sequence_truncate", "token_truncate"]:
        return torch.clamp(ratio, min=clip_min, max=clip_max)
    min_val = clip_min if clip_min is not None else -math.inf
    max_val = clip_max if clip_max is not None else math.inf
    return ratio.masked_fill((ratio < min_val) | (ratio > max_val), value=0.0)


def batch(seed=0):
    """Log-probabilities where the engine disagrees with the trainer, with tokens far enough off (a ratio of e^2
    above, e^-2 below) that every bound of every mode bites: token ratios and sequence ratios beyond both clips."""
    g = torch.Generator().manual_seed(seed)
    logp = -torch.rand(4, 6, generator=g, dtype=torch.float64) * 3
    sampling = logp + torch.randn(4, 6, generator=g, dtype=torch.float64) * 0.4
    sampling[0, 1] = logp[0, 1] - 2.0  # the trainer finds it e^2 times likelier: above clip_max
    sampling[3, 0] = logp[3, 0] + 2.0  # e^-2: below clip_min
    sampling[1, 2] = math.nan  # a token the engine could not score
    sampling[2, 4] = logp[2, 4] + 5.0  # off the completion (mask 0): must not count
    mask = torch.tensor([[1] * 6, [1] * 4 + [0] * 2, [1] * 2 + [0] * 4, [1] * 5 + [0]], dtype=torch.float64)
    return logp, sampling, mask


@pytest.mark.parametrize("mode", ["token_truncate", "token_mask", "sequence_truncate", "sequence_mask"])
@pytest.mark.parametrize(("clip_min", "clip_max"), [(None, 3.0), (0.5, 2.0), (0.9, None)])
def test_sampling_correction_is_trls(mode, clip_min, clip_max):
    old, sampling, mask = batch()
    ours = sampling_correction(old, sampling, mask, mode=mode, clip_min=clip_min, clip_max=clip_max)
    expected = trl_is_ratio(old, sampling, mask, mode, clip_min, clip_max)
    assert ours.shape == expected.shape == ((4, 1) if mode.startswith("sequence") else (4, 6))
    assert torch.equal(ours, expected)
    unbounded = trl_is_ratio(old, sampling, mask, mode.replace("truncate", "mask"), None, None)  # the raw ratio
    assert clip_max is None or (unbounded > clip_max).any()  # each bound set bites on this batch
    assert clip_min is None or (unbounded < clip_min).any()
    inside = (unbounded >= (clip_min or 0)) & (unbounded <= (clip_max or math.inf))
    assert torch.equal(ours[inside], unbounded[inside]) and inside.any()  # and leaves the rest alone
    outside = ours[~inside]
    if mode.endswith("mask"):
        assert (outside == 0).all()
    else:
        assert set(outside.tolist()) <= {clip_min, clip_max}


@pytest.mark.parametrize("loss_type", ["grpo", "dapo", "cispo", "vespo"])
def test_the_correction_weighs_the_policy_term_as_trl_does(loss_type):
    """TRL: per_token_loss * importance_sampling_ratio after the entropy mask and before the KL term; vespo
    adds the ratio's logs to its sequence log-weight instead (TRL's `get_gamma_weights`)."""
    logp, sampling, mask = batch(1)
    old = logp.detach() + torch.randn(4, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(2)) * 0.1
    ref = logp.detach() - 0.05
    adv = torch.tensor([1.0, -0.5, 0.25, -1.0], dtype=torch.float64)
    ratio = sampling_correction(old, sampling, mask, mode="token_truncate", clip_max=3.0)
    loss = GRPOLoss(loss_type=loss_type, beta=0.04, use_bias_correction_kl=False, epsilon_high=5.0 if loss_type == "cispo" else None)
    got = loss(logp, old, adv, mask, ref_logp=ref, num_items=float(mask.sum()), sampling_ratio=ratio).loss
    # TRL's per-token loss by hand.
    r = torch.exp(logp - old)
    a = adv[:, None]
    if loss_type == "vespo":
        phi = trl_gamma_weights(adv.tolist(), (logp - old).tolist(), mask.tolist(), ratio.tolist())
        per_token = -torch.tensor(phi, dtype=torch.float64)[:, None] * a * logp
    elif loss_type == "cispo":
        per_token = -torch.clamp(r, max=5.0) * a * logp * ratio
    else:
        per_token = -torch.min(r * a, torch.clamp(r, 0.8, 1.2) * a) * ratio
    d = ref - logp
    per_token = per_token + 0.04 * (torch.exp(d) - d - 1)
    if loss_type == "grpo":
        expected = ((per_token * mask).sum(1) / mask.sum(1)).mean()
    else:
        expected = (per_token * mask).sum() / mask.sum()
    assert abs(float(got - expected)) < 1e-12
    phi = gamma_weights(adv, logp - old, mask, sampling_ratio=ratio)
    assert phi.shape == (4, 1)


# -- the pieces, each against its definition ----------------------------------------------------------------


def test_nanstd_along_any_axis_is_trls_on_each_slice():
    values = torch.tensor([[[1.0, math.nan, 4.0]], [[2.0, 2.5, math.nan]]], dtype=torch.float64)  # (2, 1, 3)
    whole = trl_nanstd(values.flatten().tolist())
    assert nanstd(values).shape == () and float(nanstd(values)) == pytest.approx(whole)
    assert nanstd(values, keepdim=True).shape == (1, 1, 1)
    by_row = nanstd(values, dim=2)
    assert by_row.shape == (2, 1) and by_row.flatten().tolist() == pytest.approx([trl_nanstd([1.0, 4.0]), trl_nanstd([2.0, 2.5])])
    assert nanstd(values, dim=2, keepdim=True).shape == (2, 1, 1)
    two = nanstd(torch.tensor([1.0, 3.0], dtype=torch.float64))
    assert float(two) == pytest.approx(math.sqrt(2.0))  # two values: Bessel's n / (n - 1) = 2
    assert math.isnan(float(nanstd(torch.tensor([5.0, math.nan]))))  # fewer than two: NaN


def test_rewards_are_weighted_in_their_own_precision():
    rewards = torch.tensor([[1.0, 3.0], [math.nan, 2.0]], dtype=torch.float64)
    assert combine_rewards(rewards, [0.1, 0.7]).tolist() == [1.0 * 0.1 + 3.0 * 0.7, 2.0 * 0.7]  # float64 weights, exactly


def test_two_rollouts_scaled_by_the_batch_std():
    rewards = torch.tensor([[1.0], [0.0]], dtype=torch.float64)
    std = trl_nanstd([1.0, 0.0])
    assert group_advantages(rewards, [1.0], 2, scale="batch").tolist() == pytest.approx([0.5 / (std + 1e-4), -0.5 / (std + 1e-4)])
    normalised = 0.5 / (std + 1e-4)  # each function normalised in its group, then the sum over the batch
    assert group_advantages(rewards, [1.0], 2, aggregation="normalize_then_sum").tolist() == pytest.approx(
        [normalised / (trl_nanstd([normalised, -normalised]) + 1e-4), -normalised / (trl_nanstd([normalised, -normalised]) + 1e-4)])
    one = torch.tensor([[1.0]], dtype=torch.float64)
    assert group_advantages(one, [1.0], 1, scale="batch").tolist() == [0.0]  # alone: nothing to compare with


@pytest.mark.parametrize(("setting", "message"), [
    ({"scale": "prompt"}, "scale_rewards='prompt'; use one of ('group', 'batch', 'none')"),
    ({"aggregation": "mean"}, "multi_objective_aggregation='mean'; use one of ('sum_then_normalize', 'normalize_then_sum')"),
])
def test_unknown_advantage_settings_name_the_choices(setting, message):
    with pytest.raises(ValueError) as error:
        group_advantages(torch.ones(4, 1), [1.0], G, **setting)
    assert str(error.value) == message


def test_bnpo_accumulates_each_micro_batch_by_its_share_of_the_tokens():
    bnpo = GRPOLoss(loss_type="bnpo")
    assert bnpo.accumulation_scale(rows=1, tokens=1, total_rows=2, total_tokens=1) == 1.0  # one token in all
    assert bnpo.accumulation_scale(rows=1, tokens=3, total_rows=2, total_tokens=12) == 0.25
    assert bnpo.accumulation_scale(rows=1, tokens=0, total_rows=1, total_tokens=0) == 0.0  # no token: nothing to scale


def test_the_correction_defaults_to_trls_and_keeps_a_ratio_on_its_bound():
    """TRL 1.16's GRPOConfig: vllm_importance_sampling_mode "sequence_mask", clip_max 3.0, clip_min None; its
    masks drop ratios strictly outside [C_min, C_max], so a ratio exactly on a bound stays."""
    old, sampling, mask = batch()
    assert torch.equal(sampling_correction(old, sampling, mask), trl_is_ratio(old, sampling, mask, "sequence_mask", None, 3.0))
    on_bounds = torch.zeros(1, 3, dtype=torch.float64)
    on_bounds[0, 0], on_bounds[0, 1] = math.log(2.0), math.log(0.5)  # exactly 2 and 1/2 (powers of two)
    ratio = sampling_correction(on_bounds, torch.zeros_like(on_bounds), torch.ones_like(on_bounds), mode="token_mask",
                                clip_min=0.5, clip_max=2.0)
    assert ratio.tolist() == [[2.0, 0.5, 1.0]]


def trl_gamma_weights(adv, log_ratio, mask, sampling_ratio=None, **settings):
    """`trl_vespo_phi` of each row of a batch, over its counted tokens."""
    return [trl_vespo_phi([x for x, m in zip(row, counted, strict=True) if m], a, sampling_ratios=ratios, **settings)
            for a, row, counted, ratios in zip(adv, log_ratio, mask, sampling_ratio or [()] * len(adv), strict=True)]


def test_gamma_weights_are_trls_with_every_clamp_biting():
    log_ratio = torch.tensor([[0.1, -0.2, 0.05],  # A > 0, nothing clamped
                              [25.0, -0.5, 0.0],  # a token above 20; the sum 19.5
                              [-25.0, 3.0, 0.0],  # a token below -20; the sum below log 1e-8
                              [15.0, 10.0, 9.0],  # the sum above 20 (the last token masked out)
                              [0.3, 0.3, 0.3]], dtype=torch.float64)  # A = 0 counts as positive
    mask = torch.tensor([[1, 1, 1], [1, 1, 1], [1, 1, 1], [1, 1, 0], [1, 1, 1]], dtype=torch.float64)
    adv = torch.tensor([1.0, -1.0, 0.5, -0.5, 0.0], dtype=torch.float64)
    settings = {"k_pos": 0.3, "lambda_pos": 0.7, "k_neg": 1.3, "lambda_neg": 0.9}
    got = gamma_weights(adv, log_ratio, mask, **settings)
    assert got.shape == (5, 1) and got.dtype == torch.float64
    assert got.flatten().tolist() == pytest.approx(trl_gamma_weights(adv.tolist(), log_ratio.tolist(), mask.tolist(), **settings), rel=1e-12)
    assert gamma_weights(adv, log_ratio, mask).flatten().tolist() == pytest.approx(  # TRL's defaults (2, 3, 3, 2)
        trl_gamma_weights(adv.tolist(), log_ratio.tolist(), mask.tolist()), rel=1e-12)
    sampling = torch.tensor([[1e-10, 1.0, 1.0], [math.exp(25.0), 1.0, 1.0], [0.5, 2.0, 1.0], [1.0, 1.0, 1.0], [1.0, 1.0, 1.5]],
                            dtype=torch.float64)  # an engine's ratio below 1e-8 and one above e^20
    assert gamma_weights(adv, log_ratio * 0.01, mask, sampling_ratio=sampling).flatten().tolist() == pytest.approx(
        trl_gamma_weights(adv.tolist(), (log_ratio * 0.01).tolist(), mask.tolist(), sampling.tolist()), rel=1e-12)


def test_gamma_weights_read_an_overflow_or_nan_as_zero_and_floor_lambda():
    log_ratio = torch.tensor([[10.0], [math.nan], [1.0]], dtype=torch.float64)
    mask = torch.ones(3, 1, dtype=torch.float64)
    adv = torch.tensor([1.0, 1.0, -1.0], dtype=torch.float64)
    got = gamma_weights(adv, log_ratio, mask, k_pos=100.0, lambda_pos=1e-6, lambda_neg=1e-9)
    # row 0: lambda floored to 1e-4, exponent 1e-4 + 1000 - 1e-4 e^10 (about 998) overflows: 0; row 1: NaN: 0
    assert got[:2].tolist() == [[0.0], [0.0]]
    floor = float(torch.tensor(1e-4, dtype=torch.float32))  # TRL's clamp of a float32 lambda
    assert float(got[2]) == pytest.approx(math.exp(floor + 3.0 * 1.0 - floor * math.e), rel=1e-12)  # k_neg 3, lambda floored


def test_no_counted_token_keeps_none_and_a_half_precision_pool_has_a_quantile():
    mask = torch.zeros(2, 3)
    kept = high_entropy_mask(torch.rand(2, 3), mask, 0.5)
    assert kept.dtype == torch.bool and not kept.any()
    entropy = torch.tensor([[0.5, 1.5, 2.5], [3.5, 0.25, 1.0]], dtype=torch.bfloat16)
    mask = torch.ones(2, 3)
    assert high_entropy_mask(entropy, mask, 0.5).tolist() == high_entropy_mask(entropy.float(), mask, 0.5).tolist()


@pytest.mark.parametrize(("settings", "message"), [
    ({"loss_type": "ppo"}, "algorithm.module.loss_type=ppo; use one of grpo, bnpo, dr_grpo, dapo, gspo, cispo, sapo, luspo, vespo"),
    ({"epsilon": 0.0}, "algorithm.module.epsilon=0.0: set it between 0 and 1 (the ratio is clipped to 1 - epsilon below)"),
    ({"epsilon": 1.0}, "algorithm.module.epsilon=1.0: set it between 0 and 1 (the ratio is clipped to 1 - epsilon below)"),
    ({"epsilon_high": 0.0}, "algorithm.module.epsilon_high=0.0: set it above 0, or null for epsilon"),
    ({"delta": 1.0}, "algorithm.module.delta=1.0: set it above 1 (the cap of the unclipped ratio), or null for none"),
    ({"beta": -0.01}, "algorithm.module.beta=-0.01: set it to 0 (no KL penalty) or above"),
    ({"top_entropy_quantile": -0.1}, "algorithm.module.top_entropy_quantile=-0.1: set a fraction of the tokens, from 0 (the "
                                     "highest-entropy one) to 1 (all)"),
    ({"top_entropy_quantile": 1.5}, "algorithm.module.top_entropy_quantile=1.5: set a fraction of the tokens, from 0 (the "
                                    "highest-entropy one) to 1 (all)"),
    ({"sapo_temperature_pos": 0.0}, "algorithm.module.sapo_temperature_pos=0.0: set it above 0"),
    ({"sapo_temperature_neg": 0.0}, "algorithm.module.sapo_temperature_neg=0.0: set it above 0"),
    ({"vespo_k_pos": -1.0}, "algorithm.module.vespo_k_pos=-1.0: set it to at least 0"),
    ({"vespo_k_neg": -1.0}, "algorithm.module.vespo_k_neg=-1.0: set it to at least 0"),
    ({"vespo_lambda_pos": 0.0}, "algorithm.module.vespo_lambda_pos=0.0: set it above 0"),
    ({"vespo_lambda_neg": 0.0}, "algorithm.module.vespo_lambda_neg=0.0: set it above 0"),
    ({"loss_type": "dr_grpo"}, "loss_type=dr_grpo needs algorithm.module.sampling.max_new_tokens (its normaliser)"),
])
def test_every_loss_setting_out_of_range_is_one_line_naming_its_key(settings, message):
    from lightning_da.errors import UserError

    with pytest.raises(UserError) as error:
        GRPOLoss(**settings)
    assert str(error.value) == message


def test_the_edges_of_every_range_are_accepted():
    for settings in ({"epsilon": 0.999}, {"epsilon_high": 1e-6}, {"delta": 1.0001}, {"beta": 0.0}, {"top_entropy_quantile": 0.0},
                     {"top_entropy_quantile": 1.0}, {"vespo_k_pos": 0.0, "vespo_k_neg": 0.0}, {"loss_type": "dr_grpo", "max_completion_length": 1}):
        GRPOLoss(**settings)
    assert GRPOLoss(epsilon=0.3).epsilon_upper == 0.3 and GRPOLoss(epsilon=0.3, epsilon_high=0.28).epsilon_upper == 0.28


def test_missing_inputs_name_what_is_missing():
    logp = torch.zeros(1, 2)
    with pytest.raises(ValueError) as error:
        grpo_loss(logp, logp, torch.ones(1), torch.ones(1, 2), beta=0.1)
    assert str(error.value) == "beta > 0 needs the reference's log-probabilities"
    for loss_type in ("dapo", "cispo", "vespo"):
        with pytest.raises(ValueError) as error:
            grpo_loss(logp, logp, torch.ones(1), torch.ones(1, 2), loss_type=loss_type)
        assert str(error.value) == f"{loss_type} needs num_items, the generation batch's completion tokens"


def test_vespos_log_weight_clamps_each_token_the_engines_ratio_and_the_sum():
    """TRL's `get_gamma_weights` before phi: tokens clamped to [-20, 20] and summed over the mask, the engine's
    log-ratios clamped to [log 1e-8, 20] and added, the sum clamped to [log 1e-8, 20]."""
    low = math.log(1e-8)
    log_ratio = torch.tensor([[25.0, -10.0, 3.0],  # a token above 20: 20 - 10 (the masked 3 left out)
                              [-25.0, 10.0, 0.0],  # a token below -20: -20 + 10
                              [15.0, 10.0, 0.0],  # the sum above 20
                              [-15.0, -10.0, 0.0]], dtype=torch.float64)  # the sum below log 1e-8
    mask = torch.tensor([[1, 1, 0], [1, 1, 1], [1, 1, 1], [1, 1, 1]], dtype=torch.float64)
    assert vespo_log_weight(log_ratio, mask).flatten().tolist() == [10.0, -10.0, 20.0, low]
    sampling = torch.tensor([[1e-10, 1.0, 1.0], [math.exp(25.0), 1.0, 1.0], [1.0, 1.0, 1.0], [1.0, 1.0, 1.0]], dtype=torch.float64)
    got = vespo_log_weight(log_ratio * 0.1, mask, sampling).flatten().tolist()  # 1e-10 is floored at 1e-8, e^25 capped at e^20
    assert got == pytest.approx([1.5 + low, -1.5 + 20.0, 2.5, -2.5])


def test_the_loss_terms_carry_the_kl_and_the_vespo_weight_only_where_they_exist():
    logp = -torch.rand(2, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    old, ref = logp - 0.1, logp + 0.2
    adv, mask = torch.tensor([1.0, -0.5], dtype=torch.float64), torch.tensor([[1, 1, 1], [1, 0, 0]], dtype=torch.float64)
    plain = grpo_loss(logp, old, adv, mask)
    assert plain.kl is None and plain.phi is None and abs(float(plain.loss)) > 0.1
    d = ref - logp
    penalised = grpo_loss(logp, old, adv, mask, ref_logp=ref, beta=0.1, use_bias_correction_kl=False)
    assert float(penalised.kl) == pytest.approx(float(((torch.exp(d) - d - 1) * mask).sum() / 4))  # the mean over counted tokens
    settings = {"vespo_k_pos": 1.5, "vespo_lambda_pos": 2.5, "vespo_k_neg": 2.5, "vespo_lambda_neg": 1.5}
    vespo = grpo_loss(logp, old, adv, mask, loss_type="vespo", num_items=4.0, **settings)
    want = gamma_weights(adv, logp - old, mask, k_pos=1.5, lambda_pos=2.5, k_neg=2.5, lambda_neg=1.5).mean()
    assert float(vespo.phi) == pytest.approx(float(want)) and vespo.kl is None
    ratio = torch.full((2, 3), 0.5, dtype=torch.float64)
    assert float(grpo_loss(logp, old, adv, mask, sampling_ratio=ratio).loss) == pytest.approx(float(plain.loss) * 0.5)
    one = grpo_loss(logp[:1, :1], old[:1, :1], adv[:1], mask[:1, :1], ref_logp=ref[:1, :1], beta=0.1, use_bias_correction_kl=False)
    assert float(one.kl) == pytest.approx(float(torch.exp(d[0, 0]) - d[0, 0] - 1))  # one counted token: its own k3


def test_the_clip_is_two_sided_and_counted_strictly_outside_as_trl_counts():
    """TRL: low-clipped where ratio < 1 - epsilon with A < 0, high-clipped where ratio > 1 + epsilon_high with A > 0
    (cispo: ratio > epsilon_high); a ratio on the bound or an advantage of 0 is not clipped. A ratio below 1 - epsilon
    with A < 0 costs the clipped value (the pessimistic min)."""
    log = torch.log(torch.tensor([[0.5, 2.0, 0.25, 4.0]], dtype=torch.float64))  # exactly representable ratios
    mask = torch.ones(1, 4, dtype=torch.float64)
    for adv in (-1.0, 0.0, 1.0):
        terms = grpo_loss(log, torch.zeros_like(log), torch.tensor([adv], dtype=torch.float64), mask, loss_type="bnpo", epsilon=0.5,
                          epsilon_high=1.0)
        assert (float(terms.clip_low), float(terms.clip_high)) == ((0.25, 0.0) if adv < 0 else (0.0, 0.25) if adv > 0 else (0.0, 0.0))
    cispo = grpo_loss(log, torch.zeros_like(log), torch.tensor([1.0], dtype=torch.float64), mask, loss_type="cispo", epsilon_high=2.0,
                      num_items=4.0)
    assert float(cispo.clip_high) == 0.25  # 4.0 only: 2.0 sits on the cap
    zero = grpo_loss(log, torch.zeros_like(log), torch.tensor([0.0], dtype=torch.float64), mask, loss_type="cispo", epsilon_high=2.0,
                     num_items=4.0)
    assert float(zero.clip_high) == 0.0
    below = torch.log(torch.tensor([[0.5]], dtype=torch.float64))
    loss = grpo_loss(below, torch.zeros_like(below), torch.tensor([-1.0], dtype=torch.float64), torch.ones(1, 1, dtype=torch.float64),
                     epsilon=0.2).loss
    assert float(loss) == pytest.approx(0.8)  # -min(0.5 x -1, 0.8 x -1)


def test_delta_caps_the_unclipped_ratio_and_the_default_cap_of_the_correction_is_three():
    """Two-sided GRPO (`delta`): with A < 0 a ratio of 2 costs min(2, delta) |A|, not 2 |A|. TRL's default C_max is 3:
    a sequence 3.5 times likelier under the trainer is masked, one 2.5 times is kept."""
    two = torch.log(torch.tensor([[2.0]], dtype=torch.float64))
    loss = grpo_loss(two, torch.zeros_like(two), torch.tensor([-1.0], dtype=torch.float64), torch.ones(1, 1, dtype=torch.float64),
                     delta=1.5).loss
    assert float(loss) == pytest.approx(1.5)
    old = torch.log(torch.tensor([[3.5], [2.5]], dtype=torch.float64))
    assert sampling_correction(old, torch.zeros_like(old), torch.ones_like(old)).flatten().tolist() == pytest.approx([0.0, 2.5])


def trl_frac_reward_zero_std(rewards, weights, scale, aggregation) -> float:
    """TRL 1.16's `frac_reward_zero_std`, with loops: the fraction of rollouts whose `std_rewards` is 0, that being
    the group's std of the summed rewards (group and none), the batch's (batch), or under normalize_then_sum the
    batch's std of the per-function-normalised sums; a NaN std is not 0 (`torch.isclose`)."""
    rows = len(rewards)
    unscorable = [all(math.isnan(v) for v in row) for row in rewards]

    def weighted(row):
        return sum(w * v for w, v in zip(weights, row, strict=True) if not math.isnan(v))

    if aggregation == "normalize_then_sum":
        normalised = [[0.0] * len(weights) for _ in range(rows)]
        for f in range(len(weights)):
            for start in range(0, rows, G):
                group = [rewards[r][f] for r in range(start, start + G)]
                mean, std = nanmean(group), trl_nanstd(group)
                for i, v in enumerate(group):
                    normalised[start + i][f] = (v - mean) / (std + 1e-4)
        stds = [trl_nanstd([math.nan if unscorable[r] else weighted(normalised[r]) for r in range(rows)])] * rows
    else:
        summed = [math.nan if unscorable[r] else weighted(rewards[r]) for r in range(rows)]
        if scale == "batch":
            stds = [trl_nanstd(summed)] * rows
        else:
            stds = [trl_nanstd(summed[r - r % G : r - r % G + G]) for r in range(rows)]
    return sum(1 for s in stds if s == 0) / rows


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
@pytest.mark.parametrize("aggregation", ["sum_then_normalize", "normalize_then_sum"])
@pytest.mark.parametrize("flat_batch", [False, True])
def test_frac_reward_zero_std_is_trls(scale, aggregation, flat_batch):
    """Two of four groups agree: TRL's group (and none) scaling says 1/2, batch scaling and normalize_then_sum read
    the batch's std, which is not 0 (0); a batch whose rewards all agree is 1 under every setting."""
    rewards = torch.tensor([[1.0, 0.5]] * G + [[0.0, 0.5]] * G + [[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [0.0, 0.0]] * 2,
                           dtype=torch.float64)
    rewards[2 * G, 1] = math.nan
    if flat_batch:
        rewards = torch.ones_like(rewards)
    want = trl_frac_reward_zero_std(rewards.tolist(), [1.0, 0.5], scale, aggregation)
    assert zero_std_fraction(rewards, [1.0, 0.5], G, scale=scale, aggregation=aggregation) == pytest.approx(want)
    assert want == (1.0 if flat_batch else 0.5 if scale != "batch" and aggregation == "sum_then_normalize" else 0.0)


def _means_rank(rank: int, world: int, port: int, queue) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    # Rank 0: one counted token, clipped high; rank 1: three counted tokens, none clipped, and a sequence with none.
    if rank == 0:
        logp, mask, adv = torch.log(torch.tensor([[1.5, 1.0]])), torch.tensor([[1.0, 0.0]]), torch.tensor([1.0])
    else:
        logp = torch.zeros(2, 3)
        mask, adv = torch.tensor([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0]]), torch.tensor([1.0, -1.0])
    terms = grpo_loss(logp, torch.zeros_like(logp), adv, mask)

    def reduce_sum(t):
        dist.all_reduce(t)
        return t

    def gather(t):
        sizes = [None] * world
        dist.all_gather_object(sizes, t)
        return torch.cat(sizes)

    means = every_rank_means(terms, {"entropy": torch.tensor([float(rank + 1), float(mask.sum())])}, reduce_sum, gather)
    if rank == 0:
        queue.put(means)
    dist.destroy_process_group()


def test_logged_means_weigh_every_ranks_tokens_on_two_ranks():
    """TRL's global_masked_mean on 2 gloo ranks with 1 and 3 counted tokens: clip_ratio/high_mean is 1/4, not the mean of
    the ranks' means (1/2); low_min / high_max over every rank's sequences, the one with no token left out."""
    means = on_two_ranks(_means_rank)
    assert means["clip_high"] == pytest.approx(0.25) and means["clip_low"] == 0.0 and means["clip_region"] == pytest.approx(0.25)
    assert means["entropy"] == pytest.approx((1 + 2) / 4)
    assert means["clip_high_max"] == 1.0 and means["clip_low_min"] == 0.0

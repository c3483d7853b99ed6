"""GRPO as plain functions: rewards -> advantages -> one loss per normalisation.

Shapes: B rollouts (prompts x G generations, grouped: a prompt's G rollouts are consecutive),
T completion positions. `mask` (B, T) is 1 on completion tokens that count; `logp`, `old_logp`,
`ref_logp` (B, T) are per-token log-probabilities of the sampled tokens under the policy being
trained, the policy that sampled them, and the reference; `advantages` (B,).

Every loss starts from the per-token clipped surrogate (PPO's, as in DeepSeekMath):

    r_t = exp(logp_t - old_logp_t)                 (importance_sampling_level token)
    r_t = r = exp(mean_t(logp_t - old_logp_t))     (importance_sampling_level sequence: one per sequence, GSPO's)
    l_t = -min(min(r_t, delta) A, clip(r_t, 1 - epsilon, 1 + epsilon_high) A)   (+ beta k3_t)

with `delta` (None = off) the two-sided cap of the unclipped ratio, and the KL penalty, when
`beta` > 0, the k3 estimator k3_t = exp(ref_t - logp_t) - (ref_t - logp_t) - 1, times the ratio
r_t (with its gradient) under `use_bias_correction_kl` (TRL's default: reverse KL's unbiased
gradient off-policy, DeepSeek-V3.2). With `top_entropy_quantile` rho < 1 the policy term (not the
KL) of a token counts only if its entropy is in the top rho of the micro-batch's counted tokens on
every rank (Beyond the 80/20 rule, as TRL). With `off_policy_mask_threshold` delta_opsm the policy
term of a sequence with A < 0 is dropped when its mean sampling-to-current KL, mean_t(sampling_t -
logp_t), exceeds delta_opsm (DeepSeek-V3.2's off-policy sequence masking, as TRL). The variants
differ in how the l_t of a batch are reduced to one number:

    grpo     mean over sequences of each sequence's token mean           (DeepSeekMath)
    bnpo     sum over the local batch's tokens / its token count
    dr_grpo  sum over tokens / (sequences x max_completion_length)      (Dr. GRPO: no length bias)
    dapo     sum over tokens / tokens of the *whole generation batch*, all ranks and all
             accumulation steps (`num_items`), times the number of ranks, which DDP's gradient
             average divides back out                                   (DAPO)
    gspo     grpo at the sequence level (our shorthand for TRL's loss_type grpo with
             importance_sampling_level sequence)                        (GSPO)
    cispo    REINFORCE with a clipped, gradient-free weight:
             l_t = -sg(min(r_t, epsilon_high)) A logp_t, reduced like dapo   (MiniMax-M1); as in
             TRL, `epsilon_high` is here the cap of the weight itself (e.g. 5), not 1 + epsilon
    sapo     a soft gate instead of the clip: l_t = -sigmoid(tau (r_t - 1)) 4 / tau A, tau =
             `sapo_temperature_pos` where A > 0, else `sapo_temperature_neg`; reduced like grpo (SAPO)
    luspo    the clipped surrogate, each sequence's loss times its length: sum over its tokens, then
             the mean over sequences; LUSPO's paper uses it at the sequence level (TRL's
             default level, token, is ours too, with TRL's warning)       (LUSPO)
    vespo    REINFORCE with a smooth, gradient-free sequence weight instead of a clip:
             l_t = -phi(w) A logp_t, w = exp(sum_t (logp_t - old_logp_t)), phi(w) = e^lambda
             w^k e^(-lambda w) with shape (k, lambda) by A's sign (`gamma_weights`); reduced
             like dapo                                                     (VESPO)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from lightning.pytorch.utilities import rank_zero_warn

from lightning_da.errors import UserError

IS_MODES = ("token_truncate", "token_mask", "sequence_truncate", "sequence_mask")  # TRL's vllm_importance_sampling_mode
LOSS_TYPES = ("grpo", "bnpo", "dr_grpo", "dapo", "gspo", "cispo", "sapo", "luspo", "vespo")
LEVELS = ("token", "sequence")  # TRL's importance_sampling_level
SCALES = ("group", "batch", "none")
AGGREGATIONS = ("sum_then_normalize", "normalize_then_sum")
STD_EPS = 1e-4  # as TRL: a group whose rewards all agree gets advantage 0, not 0 / 0


def nanstd(values: torch.Tensor, dim: int | None = None, keepdim: bool = False) -> torch.Tensor:
    """The unbiased standard deviation of the non-NaN values (TRL's `nanstd`): NaN with fewer than two."""
    mean = torch.nanmean(values, dim=dim, keepdim=True)
    variance = torch.nanmean((values - mean) ** 2, dim=dim, keepdim=True)
    count = (~values.isnan()).sum(dim=dim, keepdim=True).to(values.dtype)
    variance = variance * torch.where(count > 1, count / (count - 1), torch.full_like(variance, math.nan))
    std = variance.sqrt()
    return std if keepdim else std.squeeze() if dim is None else std.squeeze(dim)


def _weighted_nansum(per_function: torch.Tensor, weights: Sequence[float]) -> torch.Tensor:
    return torch.nansum(per_function * torch.as_tensor(weights, dtype=per_function.dtype, device=per_function.device), dim=1)


def combine_rewards(per_function: torch.Tensor, weights: Sequence[float]) -> torch.Tensor:
    """(B, F) rewards, NaN where a function does not apply to a row -> (B,) weighted sum of the ones
    that do; NaN for a row no function applies to (unscorable: no reward, no baseline, no advantage)."""
    return torch.where(per_function.isnan().all(dim=1), math.nan, _weighted_nansum(per_function, weights))


def _normalised_sums(per_function: torch.Tensor, weights: Sequence[float], num_generations: int) -> torch.Tensor:
    """GDPO's (B,) sums: each function's rewards normalised within their group, weighted and summed; NaN where none applies."""
    grouped = per_function.view(-1, num_generations, per_function.size(1))
    normalised = (grouped - torch.nanmean(grouped, dim=1, keepdim=True)) / (nanstd(grouped, dim=1, keepdim=True) + STD_EPS)
    return torch.where(per_function.isnan().all(dim=1), math.nan, _weighted_nansum(normalised.flatten(0, 1), weights))


def group_advantages(per_function: torch.Tensor, weights: Sequence[float], num_generations: int, *,
                     scale: str = "group", aggregation: str = "sum_then_normalize") -> torch.Tensor:
    """Advantages (B,) from (B, F) rewards of rollouts grouped by prompt, as TRL computes them. NaN rewards
    (a function that does not apply) are left out of every mean and standard deviation; a row whose
    advantage is undefined (unscorable, or alone in its group) gets 0.

    `sum_then_normalize` (GRPO): r = the weighted sum of the rewards that apply; A = (r - group mean of r)
    / (std + 1e-4), the std being the group's (`group`) or the whole batch's (`batch`), or none (`none`).
    `normalize_then_sum` (GDPO): each function's reward normalised within its group by the group's std
    whatever `scale` says, the weighted sum of those, then normalised over the whole batch:
    A = (s - batch mean of s) / (batch std of s + 1e-4).
    """
    if scale not in SCALES:
        raise ValueError(f"scale_rewards={scale!r}; use one of {SCALES}")
    if aggregation == "sum_then_normalize":
        rewards = combine_rewards(per_function, weights)
        grouped = rewards.view(-1, num_generations)
        centred = (grouped - torch.nanmean(grouped, dim=1, keepdim=True)).flatten()
        if scale == "group":
            centred = centred / (nanstd(grouped, dim=1).repeat_interleave(num_generations) + STD_EPS)
        elif scale == "batch":
            centred = centred / (nanstd(rewards) + STD_EPS)  # one rollout: NaN std, centred 0 -> advantage 0 (TRL's too)
        return torch.nan_to_num(centred, nan=0.0)
    if aggregation == "normalize_then_sum":
        summed = _normalised_sums(per_function, weights, num_generations)
        return torch.nan_to_num((summed - torch.nanmean(summed)) / (nanstd(summed) + STD_EPS), nan=0.0)
    raise ValueError(f"multi_objective_aggregation={aggregation!r}; use one of {AGGREGATIONS}")


def zero_std_fraction(per_function: torch.Tensor, weights: Sequence[float], num_generations: int, *, scale: str = "group",
                      aggregation: str = "sum_then_normalize") -> float:
    """TRL's `frac_reward_zero_std`: the fraction of rollouts whose advantage's std is 0, that std being the one
    `group_advantages` divides by: the group's std of the summed rewards (`group`, and `none`, where TRL reads it
    for this alone), the whole batch's (`batch`), or under `normalize_then_sum` the batch's std of the normalised
    sums. A std that is NaN (fewer than two scorable rewards) is not 0."""
    if aggregation == "normalize_then_sum":
        std = nanstd(_normalised_sums(per_function, weights, num_generations)).expand(len(per_function))
    elif scale == "batch":
        std = nanstd(combine_rewards(per_function, weights)).expand(len(per_function))
    else:
        std = nanstd(combine_rewards(per_function, weights).view(-1, num_generations), dim=1).repeat_interleave(num_generations)
    return float(torch.isclose(std, torch.zeros_like(std)).float().mean())


def k3(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Per-token KL(policy || reference), the k3 estimator: unbiased and never negative. Written as TRL writes it (the
    difference taken twice), so that float64 gradients agree to the last bit."""
    return torch.exp(ref_logp - logp) - (ref_logp - logp) - 1


def sampling_correction(old_logp: torch.Tensor, sampling_logp: torch.Tensor, mask: torch.Tensor, *, mode: str = "sequence_mask",
                        clip_min: float | None = None, clip_max: float | None = 3.0) -> torch.Tensor:
    """The importance-sampling weight of rollouts sampled by an engine (vLLM) whose log-probabilities
    `sampling_logp` differ from the trainer's for the same policy, `old_logp` (TRL's
    `vllm_importance_sampling_correction`); gradient-free. With d_t = (old_t - sampling_t) mask_t (NaN -> 0):

        token_*     rho_t = exp(d_t)                      (B, T)
        sequence_*  rho = exp(sum_t d_t)                  (B, 1)
        *_truncate  rho clamped to [clip_min, clip_max]
        *_mask      rho set to 0 outside [clip_min, clip_max] (a missing bound: none that side)

    Every loss type multiplies its per-token policy term by rho (not the KL term); vespo puts it into its
    sequence weight instead (`gamma_weights`)."""
    with torch.no_grad():
        diff = torch.nan_to_num((old_logp - sampling_logp) * mask, nan=0.0)
        ratio = torch.exp(diff.sum(-1, keepdim=True) if mode.startswith("sequence") else diff)
        if mode.endswith("truncate"):
            return torch.clamp(ratio, min=clip_min, max=clip_max)
        low = -math.inf if clip_min is None else clip_min
        high = math.inf if clip_max is None else clip_max
        return ratio.masked_fill((ratio < low) | (ratio > high), 0.0)


LOG_W_MIN = math.log(1e-8)  # VESPO's floor of the sequence log-weight, as TRL (and the paper's code) clamp it


def vespo_log_weight(log_ratio: torch.Tensor, mask: torch.Tensor, sampling_ratio: torch.Tensor | None = None) -> torch.Tensor:
    """VESPO's sequence log-weight log w (B, 1), gradient-free: the per-token log-ratios, each clamped to [-20, 20],
    summed over the mask; plus, with `sampling_ratio`, its logs, each clamped to [log 1e-8, 20]; the sum clamped to
    [log 1e-8, 20] (TRL's `get_gamma_weights`)."""
    with torch.no_grad():
        log_w = torch.sum(torch.clamp(log_ratio, -20.0, 20.0) * mask, dim=-1, keepdim=True)
        if sampling_ratio is not None:
            log_w = log_w + torch.clamp(torch.log(sampling_ratio), LOG_W_MIN, 20.0).sum(-1, keepdim=True)
        return log_w.clamp(LOG_W_MIN, 20.0)


def gamma_weights(advantages: torch.Tensor, log_ratio: torch.Tensor, mask: torch.Tensor, *, k_pos: float = 2.0,
                  lambda_pos: float = 3.0, k_neg: float = 3.0, lambda_neg: float = 2.0,
                  sampling_ratio: torch.Tensor | None = None) -> torch.Tensor:
    """VESPO's sequence weights (B, 1), gradient-free: with log w = `vespo_log_weight` (the sequence's summed
    per-token log-ratio, each token's clamped to [-20, 20], the sum to [log 1e-8, 20]),

        phi(w) = exp(lambda + k log w - lambda w)      (= e^lambda w^k e^(-lambda w), so phi(1) = 1)

    with (k, lambda) = (k_pos, lambda_pos) where A >= 0, else (k_neg, lambda_neg); lambda floored at 1e-4.
    `sampling_ratio` (`sampling_correction`'s, token level): its logs (each clamped to [log 1e-8, 20]) join the
    sum, making w the weight against the engine that sampled, as TRL does."""
    with torch.no_grad():
        adv = advantages.reshape(-1, 1)
        log_w = vespo_log_weight(log_ratio, mask, sampling_ratio)
        positive = adv >= 0
        k = torch.where(positive, k_pos, k_neg)  # float32, as TRL's: the product with log_w promotes it
        lam = torch.where(positive, lambda_pos, lambda_neg).clamp(min=1e-4)
        return torch.exp(lam + k * log_w - lam * torch.exp(log_w)).nan_to_num(nan=0.0, posinf=0.0, neginf=0.0)


def high_entropy_mask(entropy: torch.Tensor, mask: torch.Tensor, quantile: float, pool: torch.Tensor | None = None) -> torch.Tensor:
    """The tokens kept by `top_entropy_quantile` (TRL's `get_high_entropy_mask`): the counted tokens whose
    entropy is at least the (1 - `quantile`) quantile of `pool`, the entropies of every counted token of the
    micro-batch on every rank (default: this one's). 1 keeps every token, 0 only the highest."""
    pool = entropy[mask.bool()] if pool is None else pool
    if pool.numel() == 0:
        return torch.zeros_like(mask, dtype=torch.bool)
    threshold = torch.quantile(pool.float(), 1 - quantile)  # in float32 whatever the entropies' dtype, as TRL takes it
    return (entropy >= threshold) & mask.bool()


def off_policy_mask(advantages: torch.Tensor, logp: torch.Tensor, sampling_logp: torch.Tensor, mask: torch.Tensor,
                    threshold: float) -> torch.Tensor:
    """DeepSeek-V3.2's off-policy sequence mask (B, 1), gradient-free (TRL's `get_off_policy_mask`): 1 keeps a
    sequence, 0 drops it where A < 0 and its mean KL(sampling || current) over the counted tokens, mean_t(sampling_t
    - logp_t) (NaN log-probabilities count 0), exceeds `threshold`. `sampling_logp`: the engine's log-probabilities
    under vLLM, else the old policy's."""
    with torch.no_grad():
        kl = torch.nan_to_num(sampling_logp - logp, nan=0.0)
        mean_kl = (kl * mask).sum(1, keepdim=True) / mask.sum(1, keepdim=True).clamp(min=1.0)
        return ((advantages.reshape(-1, 1) >= 0) | (mean_kl <= threshold)).to(mask.dtype)


def _total(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(sum, count) of `values` over the counted tokens; a (B, 1) value (one per sequence) counts once per sequence
    (TRL's `global_masked_mean`, before its sum over ranks)."""
    values = values.detach().to(mask.dtype)
    if values.size(1) == 1:
        return torch.stack([values.sum(), values.new_tensor(float(values.size(0)))])
    return torch.stack([(values * mask).sum(), mask.sum()])


def _per_sequence(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B,) each sequence's mean over its counted tokens (NaN with none), or its one value (TRL's `masked_seq_mean`)."""
    values = values.detach().to(mask.dtype)
    return values.squeeze(1) if values.size(1) == 1 else (values * mask).sum(1) / mask.sum(1)


@dataclass(frozen=True)
class LossTerms:
    """One micro-batch's loss and what the trainer logs about it. `totals` holds, detached, (sum, count) per
    quantity, so that means can be taken over every rank's tokens (sequences for a per-sequence quantity), as TRL's
    `global_masked_mean`: `clip_low` (ratio below 1 - epsilon with A < 0), `clip_high` (above 1 + epsilon_high with
    A > 0; cispo: above epsilon_high), `clip_region` (either), `kl` (the per-token KL term, with the ratio under
    use_bias_correction_kl), `phi` (vespo's sequence weight); only those the loss type has. `per_sequence`: each
    sequence's clip fractions (B,), NaN for a sequence with no counted token, for TRL's `clip_ratio/low_min` and
    `high_max`."""

    loss: torch.Tensor
    totals: dict[str, torch.Tensor]
    per_sequence: dict[str, torch.Tensor]

    def mean(self, name: str) -> torch.Tensor | None:
        """This micro-batch's mean of a quantity (None where the loss type has none)."""
        total = self.totals.get(name)
        return None if total is None else total[0] / total[1].clamp(min=1.0)

    clip_low = property(lambda self: self.mean("clip_low"))
    clip_high = property(lambda self: self.mean("clip_high"))
    kl = property(lambda self: self.mean("kl"))
    phi = property(lambda self: self.mean("phi"))


def every_rank_means(terms: LossTerms, extra: dict[str, torch.Tensor], reduce_sum: Callable, gather: Callable) -> dict[str, float]:
    """What TRL logs of one micro-batch, over every rank: each quantity's mean over every rank's tokens (sequences
    for a per-sequence one), sum over sums / sum over counts, not a mean of the ranks' means (TRL's
    `global_masked_mean`); `clip_low_min` / `clip_high_max`, the least / greatest per-sequence clip fraction over
    every rank's sequences, NaN where none has a counted token (TRL's `nanmin` / `nanmax`). `extra`: more (sum,
    count) pairs (the entropy); `reduce_sum` sums a tensor over ranks, `gather` concatenates a 1-D one's."""
    totals = {**terms.totals, **extra}
    names = list(totals)
    reduced = reduce_sum(torch.stack([totals[n].float() for n in names]))
    means = {name: total / max(count, 1.0) for name, (total, count) in zip(names, reduced.tolist(), strict=True)}
    for name, per_sequence in terms.per_sequence.items():
        gathered = gather(per_sequence.float())
        finite = gathered[~gathered.isnan()]
        lowest = name == "clip_low"
        means[f"{name}_{'min' if lowest else 'max'}"] = math.nan if not finite.numel() else float(finite.min() if lowest else finite.max())
    return means


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (values * mask).sum() / mask.sum().clamp(min=1.0)


# The loss types normalised by the whole generation batch's tokens (`num_items`) already.
BATCH_NORMALISED = ("dapo", "cispo", "vespo")
CLIPPED = ("grpo", "bnpo", "dr_grpo", "dapo", "gspo", "luspo")  # the clipped surrogate, and TRL's clip ratios


@dataclass(frozen=True)
class GRPOLoss:
    """The loss settings of a run (`algorithm.module.*`; the completion budget for dr_grpo), checked once;
    calling it gives one micro-batch's loss (module docstring), and `accumulation_scale` how micro-batch
    losses accumulate into a step."""

    loss_type: str = "grpo"
    epsilon: float = 0.2
    epsilon_high: float | None = None
    delta: float | None = None
    beta: float = 0.0
    max_completion_length: int | None = None
    sapo_temperature_pos: float = 1.0
    sapo_temperature_neg: float = 1.05
    vespo_k_pos: float = 2.0
    vespo_lambda_pos: float = 3.0
    vespo_k_neg: float = 3.0
    vespo_lambda_neg: float = 2.0
    top_entropy_quantile: float = 1.0
    use_bias_correction_kl: bool = True
    importance_sampling_level: str | None = None  # None: TRL's default, token; gspo's sequence
    off_policy_mask_threshold: float | None = None

    def __post_init__(self) -> None:
        key = "algorithm.module"
        if self.loss_type not in LOSS_TYPES:
            raise UserError(f"{key}.loss_type={self.loss_type}; use one of {', '.join(LOSS_TYPES)}")
        if self.importance_sampling_level not in (None, *LEVELS):
            raise UserError(f"{key}.importance_sampling_level={self.importance_sampling_level}; use token or sequence "
                            "(null: TRL's default, token)")
        if self.loss_type == "gspo" and self.importance_sampling_level == "token":
            raise UserError(f"{key}.loss_type=gspo is grpo at the sequence level; for token-level ratios use "
                            f"{key}.loss_type=grpo")
        if not 0 < self.epsilon < 1:
            raise UserError(f"{key}.epsilon={self.epsilon}: set it between 0 and 1 (the ratio is clipped to 1 - epsilon below)")
        if self.epsilon_high is not None and not self.epsilon_high > 0:
            raise UserError(f"{key}.epsilon_high={self.epsilon_high}: set it above 0, or null for epsilon")
        if self.delta is not None and not self.delta > 1:
            raise UserError(f"{key}.delta={self.delta}: set it above 1 (the cap of the unclipped ratio), or null for none")
        if not self.beta >= 0:
            raise UserError(f"{key}.beta={self.beta}: set it to 0 (no KL penalty) or above")
        if self.off_policy_mask_threshold is not None and not self.off_policy_mask_threshold > 0:
            raise UserError(f"{key}.off_policy_mask_threshold={self.off_policy_mask_threshold}: set it above 0 (e.g. 0.5, "
                            "DeepSeek-V3.2's delta), or null for no masking")
        if not 0 <= self.top_entropy_quantile <= 1:
            raise UserError(f"{key}.top_entropy_quantile={self.top_entropy_quantile}: set a fraction of the tokens, "
                            "from 0 (the highest-entropy one) to 1 (all)")
        for name, low, strict in (("sapo_temperature_pos", 0, True), ("sapo_temperature_neg", 0, True), ("vespo_k_pos", 0, False),
                                  ("vespo_k_neg", 0, False), ("vespo_lambda_pos", 0, True), ("vespo_lambda_neg", 0, True)):
            value = getattr(self, name)
            if not (value > low if strict else value >= low):
                raise UserError(f"{key}.{name}={value}: set it {'above' if strict else 'to at least'} {low}")
        if self.loss_type == "dr_grpo" and not self.max_completion_length:
            raise UserError(f"loss_type=dr_grpo needs {key}.sampling.max_new_tokens (its normaliser)")
        for warn, message in (  # TRL's warnings, for the same settings
                (self.loss_type == "luspo" and self.level == "token",
                 "loss_type=luspo at importance_sampling_level=token: LUSPO's paper uses sequence-level ratios; set "
                 f"{key}.importance_sampling_level=sequence to mirror it"),
                (self.loss_type == "vespo" and self.level == "sequence",
                 "loss_type=vespo weighs whole sequences itself; importance_sampling_level should be token"),
                (self.level == "sequence" and self.loss_type in ("bnpo", "dr_grpo", "dapo", "cispo"),
                 f"importance_sampling_level=sequence with loss_type={self.loss_type} sums per-token terms, weighting each "
                 "sequence by its length; GSPO's objective is loss_type=grpo (or gspo)")):
            if warn:
                rank_zero_warn(message)

    @property
    def level(self) -> str:
        """The importance ratio's level: `importance_sampling_level`, else TRL's token (gspo: sequence)."""
        return self.importance_sampling_level or ("sequence" if self.loss_type == "gspo" else "token")

    @property
    def epsilon_upper(self) -> float:
        return self.epsilon if self.epsilon_high is None else self.epsilon_high

    def __call__(self, logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor, *,
                 ref_logp: torch.Tensor | None = None, num_items: float | None = None, world_size: int = 1,
                 entropy_mask: torch.Tensor | None = None, sampling_ratio: torch.Tensor | None = None,
                 sampling_logp: torch.Tensor | None = None) -> LossTerms:
        """One micro-batch's loss. `num_items` (completion tokens of the part of the generation batch this optimizer
        step trains on, all ranks) and `world_size` are needed by dapo, cispo and vespo; `entropy_mask` (B, T)
        (`high_entropy_mask`) keeps only those tokens in the policy term (not in the KL term, nor in the
        normalisers); `sampling_ratio` (`sampling_correction`) weighs the policy term of each token (vespo: its
        sequence weight); `sampling_logp` (B, T), the engine's log-probabilities, is what the off-policy mask
        compares with (default: `old_logp`, as TRL). To accumulate micro-batches, scale each by `accumulation_scale`."""
        mask = mask.to(logp.dtype)
        adv = advantages[:, None]
        log_ratio = logp - old_logp
        if self.level == "sequence":
            ratio = torch.exp(((log_ratio * mask).sum(1) / mask.sum(1).clamp(min=1.0))[:, None])
        else:
            ratio = torch.exp(log_ratio)
        phi = gamma_weights(advantages, log_ratio, mask, k_pos=self.vespo_k_pos, lambda_pos=self.vespo_lambda_pos,
                            k_neg=self.vespo_k_neg, lambda_neg=self.vespo_lambda_neg,
                            sampling_ratio=sampling_ratio) if self.loss_type == "vespo" else None
        per_token = self._surrogate(ratio, adv, logp, phi)
        if self.off_policy_mask_threshold is not None:
            per_token = per_token * off_policy_mask(advantages, logp, old_logp if sampling_logp is None else sampling_logp, mask,
                                                    self.off_policy_mask_threshold)
        if entropy_mask is not None:
            per_token = per_token * entropy_mask
        if sampling_ratio is not None and self.loss_type != "vespo":
            per_token = per_token * sampling_ratio
        clipped = self._clipped(ratio.detach(), adv)
        totals = {name: _total(flags, mask) for name, flags in clipped.items()}
        if self.beta != 0.0:
            if ref_logp is None:
                raise ValueError("beta > 0 needs the reference's log-probabilities")
            per_token_kl = k3(logp, ref_logp)
            if self.use_bias_correction_kl:  # as TRL: the ratio (with its gradient) makes it reverse KL's unbiased gradient
                per_token_kl = per_token_kl * ratio
            per_token = per_token + self.beta * per_token_kl
            totals["kl"] = _total(per_token_kl, mask)
        if phi is not None:
            totals["phi"] = _total(phi, mask)
        loss = self._reduce(per_token, mask, num_items=num_items, world_size=world_size)
        per_sequence = {} if self.loss_type == "cispo" else {  # TRL's low_min / high_max: the clipped surrogate's only
            name: _per_sequence(flags, mask) for name, flags in clipped.items() if name != "clip_region"}
        return LossTerms(loss, totals, per_sequence)

    def _surrogate(self, ratio: torch.Tensor, adv: torch.Tensor, logp: torch.Tensor, phi: torch.Tensor | None) -> torch.Tensor:
        """The per-token l_t before the KL term ((B, 1) where it is one per sequence)."""
        if self.loss_type == "sapo":
            tau = torch.where(adv > 0, self.sapo_temperature_pos, self.sapo_temperature_neg)
            return -torch.sigmoid(tau * (ratio - 1)) * 4 / tau * adv
        if self.loss_type == "cispo":
            return -torch.clamp(ratio, max=self.epsilon_upper).detach() * adv * logp
        if self.loss_type == "vespo":
            return -phi * adv * logp
        clipped = torch.clamp(ratio, 1 - self.epsilon, 1 + self.epsilon_upper)
        return -torch.min(self._capped(ratio) * adv, clipped * adv)

    def _capped(self, ratio: torch.Tensor) -> torch.Tensor:
        """The clipped surrogate's unclipped ratio: capped at `delta` when set (TRL counts its clip ratios on it too)."""
        return ratio if self.delta is None else torch.clamp(ratio, max=self.delta)

    def _reduce(self, per_token: torch.Tensor, mask: torch.Tensor, *, num_items: float | None, world_size: int) -> torch.Tensor:
        """The per-token losses reduced to one number as `loss_type` normalises them (module docstring)."""
        if self.loss_type in ("grpo", "gspo", "sapo"):
            return ((per_token * mask).sum(1) / mask.sum(1).clamp(min=1.0)).mean()
        if self.loss_type == "luspo":
            return (per_token * mask).sum(1).mean()
        if self.loss_type == "bnpo":
            return _masked_mean(per_token, mask)
        if self.loss_type == "dr_grpo":
            return (per_token * mask).sum() / (per_token.size(0) * self.max_completion_length)
        if num_items is None:  # dapo, cispo, vespo
            raise ValueError(f"{self.loss_type} needs num_items, the generation batch's completion tokens")
        return (per_token * mask).sum() / (max(num_items, 1.0) / world_size)

    def _clipped(self, ratio: torch.Tensor, adv: torch.Tensor) -> dict[str, torch.Tensor]:
        """TRL's clip indicators: clipped low (ratio < 1 - epsilon, A < 0) and high (ratio > 1 + epsilon_high, A > 0),
        the ratio capped at `delta` first; cispo's weight is clipped only above, at `epsilon_high` itself; sapo and
        vespo clip nothing."""
        if self.loss_type == "cispo":
            return {"clip_high": (ratio > self.epsilon_upper) & (adv > 0)}
        if self.loss_type not in CLIPPED:
            return {}
        ratio = self._capped(ratio)
        low, high = (ratio < 1 - self.epsilon) & (adv < 0), (ratio > 1 + self.epsilon_upper) & (adv > 0)
        return {"clip_low": low, "clip_high": high, "clip_region": low | high}

    def accumulation_scale(self, rows: int, tokens: float, total_rows: int, total_tokens: float) -> float:
        """What a micro-batch's loss (`rows` rollouts, `tokens` counted tokens, of this rank's `total_rows` and
        `total_tokens`) is multiplied by before its backward, so that the accumulated loss is the whole
        batch's however it is split, unevenly too: 1 for dapo, cispo and vespo (normalised by the whole
        batch's tokens already), its share of the tokens for bnpo (a token mean), its share of the rollouts
        for the others (means over sequences). (With top_entropy_quantile < 1 the kept tokens depend on the
        split, as in TRL: the quantile is each micro-batch's.)"""
        if self.loss_type in BATCH_NORMALISED:
            return 1.0
        if self.loss_type == "bnpo":
            return float(tokens) / max(float(total_tokens), 1.0)
        return rows / total_rows


def grpo_loss(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor, *,
              ref_logp: torch.Tensor | None = None, num_items: float | None = None, world_size: int = 1,
              entropy_mask: torch.Tensor | None = None, sampling_ratio: torch.Tensor | None = None,
              sampling_logp: torch.Tensor | None = None, **settings) -> LossTerms:
    """One micro-batch's loss with the `GRPOLoss` settings given by keyword."""
    return GRPOLoss(**settings)(logp, old_logp, advantages, mask, ref_logp=ref_logp, num_items=num_items,
                                world_size=world_size, entropy_mask=entropy_mask, sampling_ratio=sampling_ratio,
                                sampling_logp=sampling_logp)

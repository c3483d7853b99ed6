"""GRPOModule: the RL stage. The policy is the student with a trainable LoRA adapter (the SFT one,
`init_adapter`, or a fresh one); rewards come from the `reward/` group; losses are the plain
functions of `grpo_losses`.

How GRPO maps onto Lightning's loop (manual optimization):

- One `training_step` is one generation round: the dataloader's batch of `prompts_per_step`
  prompt rows (per rank) gets `num_generations` (G) rollouts each, sampled in eval mode (no LoRA
  dropout) after the shared prefix (chat template + `<think>`), each prompt prefilled once and
  its cache shared by its G samples. Rewards, then advantages, follow.
- Without dynamic sampling that round is the rollout batch. With it, groups whose rewards all
  agree are dropped and the step returns without an update until `prompts_per_step` informative
  groups are buffered or `max_generation_rounds` rounds ran; the batch is then topped up with
  uninformative groups (advantage 0), so every rank trains on the same number of rollouts.
- The rollout batch is used `num_iterations` (mu) times; each pass is `steps_per_generation` (k)
  optimizer steps, each on its share of the rollouts (shuffled, seeded, when the batch is split, as
  TRL's), over micro-batches of `micro_batch_size` rollouts whose gradients accumulate (accumulation
  lives here, not in `trainer.accumulate_grad_batches`), so one training step makes mu x k optimizer
  steps and `trainer.max_steps` counts optimizer steps. With mu = k = 1 the old log-probabilities are
  the current ones detached (ratio 1); else they are computed once, before the first step, in
  training mode (as TRL computes them; LoRA dropout active unless `disable_dropout`).
- TRL's entropy bonus (`entropy_coef`, adaptive with `use_adaptive_entropy`) joins each micro-batch's loss.
- The reference forward runs once per rollout batch, only when `beta` > 0.
- Log-probabilities are of logits / sampling temperature, the distribution the rollouts came from.
- With `generation.backend=vllm` the rollouts come from this rank's colocated vLLM engine
  (`generation.colocated`), which gets the policy's weights before sampling. Its log-probabilities
  differ a little from the trainer's, so the old log-probabilities are always computed (as with mu > 1)
  and TRL's importance-sampling correction weighs the policy term (`grpo_losses.sampling_correction`).
"""

from __future__ import annotations

import contextlib
import inspect
import json
import math
import time
from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import fields
from functools import partial
from pathlib import Path

import torch

from lightning_da.algorithms.adapter import AdapterModule
from lightning_da.algorithms.grpo_losses import (
    AGGREGATIONS,
    IS_MODES,
    SCALES,
    GRPOLoss,
    combine_rewards,
    every_rank_means,
    group_advantages,
    high_entropy_mask,
    nanstd,
    sampling_correction,
    zero_std_fraction,
)
from lightning_da.algorithms.rollouts import Rollouts, trim
from lightning_da.errors import UserError, check_at_least
from lightning_da.formats import prefix_ids
from lightning_da.fsdp import shards_model
from lightning_da.generation import SamplingConfig, sample_completions
from lightning_da.models.lora import apply_lora, load_adapter

REFERENCES = ("base", "init_adapter")
KEY = "algorithm.module"


class GRPOModule(AdapterModule):
    """GRPO with judge rewards (see the module docstring for the loop)."""

    def __init__(self, student, *, tokenizer, rewards: Mapping[str, Mapping], sampling: SamplingConfig,
                 optimizer: Callable[..., torch.optim.Optimizer], scheduler: Callable | None = None, init_adapter: str | None = None,
                 lora: dict | None = None, num_generations: int = 8, num_iterations: int = 1, micro_batch_size: int = 8,
                 generation_batch_size: int = 8, loss_type: str = "grpo", epsilon: float = 0.2, epsilon_high: float | None = None,
                 delta: float | None = None, beta: float = 0.0, sapo_temperature_pos: float = 1.0, sapo_temperature_neg: float = 1.05,
                 vespo_k_pos: float = 2.0, vespo_lambda_pos: float = 3.0, vespo_k_neg: float = 3.0, vespo_lambda_neg: float = 2.0,
                 top_entropy_quantile: float = 1.0, use_bias_correction_kl: bool = True, importance_sampling_level: str | None = None,
                 off_policy_mask_threshold: float | None = None, entropy_coef: float = 0.0, use_adaptive_entropy: bool = False,
                 entropy_coef_min: float = 0.0, entropy_coef_max: float = 1.0, entropy_coef_delta: float = 0.005,
                 entropy_target: float = 0.2, steps_per_generation: int = 1, disable_dropout: bool = False,
                 reference: str = "base", scale_rewards: str | bool = "group",
                 multi_objective_aggregation: str = "sum_then_normalize", dynamic_sampling: bool = False,
                 max_generation_rounds: int = 4, mask_truncated_completions: bool = False, max_grad_norm: float | None = 1.0,
                 log_completions_steps: int = 10, completions_file: str | None = None, warmup_ratio: float = 0.0,
                 gradient_checkpointing: bool = False, seed: int = 0, vllm_importance_sampling_correction: bool = True,
                 vllm_importance_sampling_mode: str = "sequence_mask", vllm_importance_sampling_clip_min: float | None = None,
                 vllm_importance_sampling_clip_max: float | None = 3.0, rollout_engine: Callable | None = None):
        super().__init__(student, optimizer=optimizer, scheduler=scheduler, warmup_ratio=warmup_ratio,
                         gradient_checkpointing=gradient_checkpointing)
        self.automatic_optimization = False
        self.loss = check_settings({name: value for name, value in locals().items() if name in SETTINGS})
        self.num_generations, self.num_iterations, self.micro_batch_size = num_generations, num_iterations, micro_batch_size
        self.generation_batch_size, self.max_generation_rounds = generation_batch_size, max_generation_rounds
        self.tokenizer, self.sampling, self.init_adapter, self.reference = tokenizer, sampling, init_adapter, reference
        self.reward_fns = {name: spec["fn"] for name, spec in rewards.items()}
        self.reward_weights = [float(spec.get("weight", 1.0)) for spec in rewards.values()]
        self.lora = dict(lora) if lora else None
        self.scale_rewards, self.aggregation = scale_name(scale_rewards), multi_objective_aggregation
        self.steps_per_generation, self.disable_dropout = steps_per_generation, disable_dropout
        self._entropy_bonus_settings(entropy_coef, use_adaptive_entropy, entropy_coef_min, entropy_coef_max, entropy_coef_delta,
                                     entropy_target)
        # when the rounds of the coming update began (step_time); prompt and completion tokens trained on, every rank
        self._round_started, self.num_tokens = None, 0
        self.dynamic_sampling, self.mask_truncated_completions = dynamic_sampling, mask_truncated_completions
        self.max_grad_norm, self.log_completions_steps, self.seed = max_grad_norm, log_completions_steps, seed
        self.completions_file = Path(completions_file) if completions_file else None
        self._buffer, self._rounds = [], 0  # dynamic sampling's informative groups so far, and its rounds
        self._reference_weights: dict[str, torch.Tensor] | None = None
        self._resized = False
        # generation.backend=vllm: the colocated engine's factory (`PolicyEngine`), built in on_fit_start
        self.rollout_engine, self._engine = rollout_engine, None
        self.correction = vllm_correction(rollout_engine is not None and vllm_importance_sampling_correction, loss_type,
                                          vllm_importance_sampling_mode, vllm_importance_sampling_clip_min, vllm_importance_sampling_clip_max)

    def _entropy_bonus_settings(self, coef: float, adaptive: bool, coef_min: float, coef_max: float, delta: float,
                                target: float) -> None:
        """TRL's entropy bonus: on with a coefficient or adaptive control; the controller's state (the coefficient, the
        last step's entropy) is checkpointed."""
        self.entropy_control = {"adaptive": adaptive, "min": coef_min, "max": coef_max, "delta": delta, "target": target}
        self.entropy_bonus = coef != 0.0 or adaptive
        self.entropy_coef, self._last_world_entropy = coef, math.inf

    # -- resume: what a checkpoint holds besides the weights ---------------------------------------

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["grpo"] = {"entropy_coef": self.entropy_coef, "last_world_entropy": self._last_world_entropy,
                              "num_tokens": self.num_tokens}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        super().on_load_checkpoint(checkpoint)
        state = checkpoint.get("grpo", {})
        self.entropy_coef = state.get("entropy_coef", self.entropy_coef)
        self._last_world_entropy = state.get("last_world_entropy", self._last_world_entropy)
        self.num_tokens = state.get("num_tokens", self.num_tokens)

    # -- the policy ---------------------------------------------------------------------------

    def configure_model(self) -> None:
        if self.model is not None:
            return
        model = self.load_student()
        rows = model.get_input_embeddings().weight.shape[0]
        if self.init_adapter:
            model = load_adapter(model, self.init_adapter, trainable=True, key=f"{KEY}.init_adapter", model_name=self.student.name,
                                 tokenizer=self.tokenizer, upcast_modules_to_save=(self.lora or {}).get("upcast_modules_to_save", True))
        else:
            model = apply_lora(model, **self.lora)
        if self.disable_dropout:  # TRL's disable_dropout_in_model: every dropout layer (LoRA's included) at p = 0
            for layer in model.modules():
                if isinstance(layer, torch.nn.Dropout):
                    layer.p = 0.0
        self.model = model.train()
        self._resized = model.get_input_embeddings().weight.shape[0] != rows  # the adapter's think tokens grew the vocabulary
        if self.loss.beta > 0 and self.reference == "init_adapter":
            # The frozen initial adapter: a copy of the trainable weights, swapped in for the reference forward.
            self._reference_weights = {n: p.detach().clone() for n, p in self.model.named_parameters() if p.requires_grad}

    def _sharded(self) -> bool:
        return shards_model(self.trainer) and self.trainer.world_size > 1

    def on_fit_start(self) -> None:
        if self.rollout_engine is not None and self._engine is None:
            if self._resized:
                raise UserError(f"{KEY}.init_adapter added <think> and </think> to the vocabulary, which the colocated vLLM "
                                "engine's copy of the student lacks; use generation.backend=hf for GRPO from it")
            self._engine = self.rollout_engine(policy=self.model)
        if self._reference_weights is not None and self._sharded():
            # FSDP gathers each layer from its own copy of the shards, not from the parameters swapped here.
            raise UserError(f"{KEY}.reference=init_adapter cannot run under trainer=fsdp; use {KEY}.reference=base, or trainer=ddp")

    @contextlib.contextmanager
    def reference_policy(self):
        """The reference model in place of the policy: the base (adapter disabled) or the initial adapter."""
        if self._reference_weights is None:
            with self.model.disable_adapter():
                yield
            return
        params = dict(self.model.named_parameters())
        current = {n: params[n].data for n in self._reference_weights}
        for n, weight in self._reference_weights.items():
            params[n].data = weight
        try:
            yield
        finally:
            for n, weight in current.items():
                params[n].data = weight

    def token_logps(self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, completion_ids: torch.Tensor,
                    completion_mask: torch.Tensor, *, entropy: bool = False, entropy_grad: bool = False):
        """Per-token log-probabilities (b, T) of the completion tokens after left-padded prompts,
        of logits / temperature; and, if asked, the per-token entropy (with its gradient only if asked: the bonus)."""
        ids = torch.cat([prompt_ids, completion_ids], dim=1)
        mask = torch.cat([prompt_mask, completion_mask], dim=1)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        width = completion_ids.size(1)
        logits = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, logits_to_keep=width + 1,
                            use_cache=False).logits
        logits = logits[:, :-1].float() / self.sampling.temperature
        normaliser = logits.logsumexp(-1)
        logp = logits.gather(-1, completion_ids[..., None]).squeeze(-1) - normaliser
        if not entropy:
            return logp, None
        with torch.set_grad_enabled(entropy_grad and torch.is_grad_enabled()):
            probs = (logits - normaliser[..., None]).exp()
            return logp, normaliser - (probs * logits).sum(-1)

    @contextlib.contextmanager
    def _eval_mode(self):
        """Sampling and the old/reference forwards run without LoRA dropout."""
        was_training = self.model.training
        self.model.eval()
        try:
            yield
        finally:
            self.model.train(was_training)

    # -- rollouts -------------------------------------------------------------------------------

    @torch.no_grad()
    def rollouts(self, rows: list[dict], seed: int) -> Rollouts:
        """G rollouts for each prompt row (from the vLLM engine, which first gets the policy's current weights, or
        from the policy itself), decoded, and scored by every reward function."""
        prompt_ids = [prefix_ids(self.tokenizer, r["prompt"]) for r in rows]
        if self._engine is not None:
            sampled = self._engine.sample(self.model, self.global_step, prompt_ids, self.tokenizer, n=self.num_generations,
                                          sampling=self.sampling, seed=seed)
        else:
            with self._eval_mode():
                sampled = sample_completions(self.model, self.tokenizer, [r["prompt"] for r in rows], n=self.num_generations,
                                             sampling=self.sampling, batch_size=self.generation_batch_size, seed=seed,
                                             progress=False, synced_gpus=self._sharded())
        completions = [c for row in sampled for c in row]
        ids = [c.ids for c in completions]
        texts = self.tokenizer.batch_decode(ids, skip_special_tokens=True)
        rewards = self._rewards(rows, texts, ids)
        return Rollouts(rows, prompt_ids, ids, texts, torch.tensor([c.truncated for c in completions]), rewards,
                        [c.logprobs for c in completions] if self._engine is not None else None)

    def _rewards(self, rows: list[dict], texts: list[str], ids: list[list[int]]) -> torch.Tensor:
        """(B, F): every reward function on every rollout, NaN where one does not apply."""
        g = self.num_generations
        prompts = [r["prompt"] for r in rows for _ in range(g)]
        columns = {k: [r.get(k) for r in rows for _ in range(g)] for k in rows[0] if k != "prompt"}
        table = []
        for name, fn in self.reward_fns.items():
            values = fn(prompts, texts, completion_ids=ids, **columns)
            if len(values) != len(texts):
                raise UserError(f"reward {name} returned {len(values)} values for {len(texts)} completions")
            table.append([math.nan if v is None else float(v) for v in values])
        return torch.tensor(table, dtype=torch.float32).T

    def _group_std(self, rollouts: Rollouts) -> torch.Tensor:
        """(P,) the std of each prompt's combined rewards over its scorable rollouts (NaN below two)."""
        return nanstd(combine_rewards(rollouts.rewards, self.reward_weights).view(-1, self.num_generations), dim=1)

    # -- the training step ---------------------------------------------------------------------

    def training_step(self, batch: list[dict], batch_idx: int):
        self._round_started = self._round_started or time.perf_counter()
        step_seed = self.seed + 10_000 * (self.global_step * self.trainer.world_size + self.trainer.global_rank) + self._rounds
        rollouts = self.rollouts(batch, seed=step_seed)
        self._rounds += 1
        everyone = self._every_rank_rows(rollouts.rewards.to(self.device))
        self.log("train/frac_reward_zero_std", zero_std_fraction(everyone, self.reward_weights, self.num_generations,
                                                                 scale=self.scale_rewards, aggregation=self.aggregation))
        if self.dynamic_sampling:
            zero_std = (~(self._group_std(rollouts) > 1e-8)).tolist()  # no signal: the rewards agree, or fewer than two scorable
            self._buffer.append(rollouts.groups([k for k, flat in enumerate(zero_std) if not flat]))
            ready = torch.tensor(float(sum(len(b.rows) for b in self._buffer) >= len(batch)), device=self.device)
            ready = self.trainer.strategy.reduce(ready, reduce_op="min")  # every rank steps, or none
            if ready < 1 and self._rounds < self.max_generation_rounds:
                return None
            # Top up with this round's uninformative groups (advantage 0): the batch size stays fixed.
            informative = Rollouts.cat(self._buffer)
            chosen = informative.groups(list(range(min(len(batch), len(informative.rows)))))
            flat = [k for k, z in enumerate(zero_std) if z][: len(batch) - len(chosen.rows)]
            rollouts = Rollouts.cat([chosen, rollouts.groups(flat)])
            self._buffer = []
        self._rounds = 0
        return self._train_on(rollouts, seed=step_seed, everyone=None if self.dynamic_sampling else everyone)

    def _every_rank_rows(self, local: torch.Tensor) -> torch.Tensor:
        """(world x B, ...) every rank's rows of a tensor with the same leading size on each, in rank order."""
        if self.trainer.world_size == 1:
            return local
        return self.all_gather(local).reshape(-1, *local.shape[1:])

    def _advantages(self, rewards: torch.Tensor, everyone: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(this rank's advantages (B,), normalised over every rank's rollouts; every rank's rewards (world x B, F),
        gathered here unless given)."""
        local = rewards.to(self.device)
        everyone = self._every_rank_rows(local) if everyone is None else everyone
        advantages = group_advantages(everyone, self.reward_weights, self.num_generations, scale=self.scale_rewards,
                                      aggregation=self.aggregation)
        rank = self.trainer.global_rank if self.trainer.world_size > 1 else 0
        return advantages[rank * local.size(0) : (rank + 1) * local.size(0)], everyone

    def _order(self, n_rollouts: int, seed: int) -> torch.Tensor:
        """The rollouts' order for training: shuffled (seeded by the round, so a resumed run draws the same) before the
        batch is split into optimizer steps and micro-batches, as TRL shuffles its generation batch; left in order
        when it is not split (one micro-batch: a permutation would change nothing but float rounding)."""
        steps = self.steps_per_generation
        if n_rollouts % steps:
            raise UserError(f"{KEY}.steps_per_generation={steps} does not divide this rank's {n_rollouts} rollouts per generation "
                            f"(algorithm.datamodule.prompts_per_step x {KEY}.num_generations); choose a divisor")
        if steps == 1 and n_rollouts <= self.micro_batch_size:
            return torch.arange(n_rollouts)
        return torch.randperm(n_rollouts, generator=torch.Generator().manual_seed(seed))

    def _train_on(self, rollouts: Rollouts, seed: int, everyone: torch.Tensor | None = None) -> torch.Tensor:
        """`num_iterations` passes over the rollouts, each `steps_per_generation` optimizer steps on its share of them, each
        step accumulating over micro-batches. `everyone`: every rank's rewards of these rollouts, if already gathered."""
        started = self._round_started
        p_ids, p_mask, c_ids, c_mask = rollouts.tensors(self.tokenizer.pad_token_id)
        loss_mask = c_mask.clone()
        if self.mask_truncated_completions:
            loss_mask[rollouts.truncated] = 0
        advantages, everyone = self._advantages(rollouts.rewards, everyone)
        n_rollouts = len(rollouts.completion_ids)
        order = self._order(n_rollouts, seed)
        tensors = [t[order].to(self.device) for t in (p_ids, p_mask, c_ids, c_mask, loss_mask)]
        sampling = rollouts.sampling_tensor()
        sampling = None if sampling is None else sampling[order]
        shuffled = advantages[order.to(advantages.device)]
        size = n_rollouts // self.steps_per_generation
        micro = [slice(i, min(i + self.micro_batch_size, start + size)) for start in range(0, n_rollouts, size)
                 for i in range(start, start + size, self.micro_batch_size)]
        batches = [trim(*(t[part] for t in tensors)) for part in micro]
        num_items = float(self.trainer.strategy.reduce(tensors[4].sum().float(), reduce_op="sum")) / self.steps_per_generation
        old, ref = self._fixed_logps(batches)
        ratios = self._sampling_ratios(sampling, micro, batches, old, n_rollouts)
        stats: dict[str, float] = defaultdict(float)
        steps = [[k for k, part in enumerate(micro) if start <= part.start < start + size] for start in range(0, n_rollouts, size)]
        for _ in range(self.num_iterations):
            for step in steps:
                totals = (sum(micro[k].stop - micro[k].start for k in step), float(sum(batches[k][4].sum() for k in step)))
                counts = (len(step), len(steps) * self.num_iterations, len(micro) * self.num_iterations)
                window = torch.zeros(2, device=self.device)  # the step's (entropy sum, token count): adaptive control
                for k in step:
                    engine = None if sampling is None else sampling[micro[k]][:, : batches[k][4].size(1)].to(self.device)
                    window += self._accumulate(batches[k], old[k], ref[k], shuffled[micro[k]], num_items, totals, counts, stats,
                                               ratios[k], engine)
                self._optimizer_step()
                self._update_entropy_coef(window, stats, len(steps) * self.num_iterations)
        stats["step_time"] = (time.perf_counter() - started) / (len(steps) * self.num_iterations)
        self._round_started = None
        self._log_step(rollouts, advantages, everyone, p_mask, c_mask, stats)
        return torch.tensor(stats["loss"])

    @torch.no_grad()
    def _fixed_logps(self, batches: list[tuple]) -> tuple[list, list]:
        """Per micro-batch: the old policy's log-probabilities and the reference's (only with beta > 0, in eval mode,
        as TRL's separate reference model). The old ones only where the batch is trained on off-policy (more than one
        optimizer step per generation: num_iterations or steps_per_generation > 1) or with the vLLM correction, as
        TRL; else the current ones, detached, are the old. TRL computes them in training mode (LoRA dropout active
        unless disable_dropout), and so do we."""
        old, ref = [None] * len(batches), [None] * len(batches)
        off_policy = self.num_iterations * self.steps_per_generation > 1 or self.correction is not None
        for k, (p_ids, p_mask, c_ids, c_mask, _) in enumerate(batches):
            if off_policy:
                old[k] = self.token_logps(p_ids, p_mask, c_ids, c_mask)[0]
            if self.loss.beta > 0:
                with self._eval_mode(), self.reference_policy():
                    ref[k] = self.token_logps(p_ids, p_mask, c_ids, c_mask)[0]
        return old, ref

    def _sampling_ratios(self, sampling: torch.Tensor | None, micro: list[slice], batches: list[tuple], old: list,
                         batch_size: int) -> list:
        """Per micro-batch, the vLLM correction's weights (`sampling_correction`; None without it), and TRL's
        `sampling/*` metrics of the gap between the engine's and the trainer's log-probabilities."""
        if self.correction is None or sampling is None:
            return [None] * len(batches)
        ratios, gaps, kept = [], [], []
        for part, batch, old_logp in zip(micro, batches, old, strict=True):
            mask = batch[4]
            engine = sampling[part][:, : mask.size(1)].to(old_logp)
            ratios.append(sampling_correction(old_logp, engine, mask, **self.correction))
            gap = (old_logp - engine).abs()[mask.bool()]
            gaps.append(gap[~gap.isnan()])
            kept.append(ratios[-1].flatten() if self.correction["mode"].startswith("sequence") else ratios[-1][mask.bool()])
        gap, kept = torch.cat(gaps), torch.cat(kept)
        zero = torch.zeros((), device=self.device)
        name = "train/sampling/"
        for key, value, reduce in ((f"{name}sampling_logp_difference/mean", gap.mean() if gap.numel() else zero, "mean"),
                                   (f"{name}sampling_logp_difference/max", gap.max() if gap.numel() else zero, "max"),
                                   (f"{name}importance_sampling_ratio/min", kept.min() if kept.numel() else zero, "min"),
                                   (f"{name}importance_sampling_ratio/mean", kept.mean() if kept.numel() else zero, "mean"),
                                   (f"{name}importance_sampling_ratio/max", kept.max() if kept.numel() else zero, "max")):
            self.log(key, float(value), sync_dist=True, reduce_fx=reduce, batch_size=batch_size)
        return ratios

    def _accumulate(self, batch: tuple, old, ref, advantages, num_items: float, totals: tuple[int, float], counts: tuple[int, int, int],
                    stats: dict, sampling_ratio: torch.Tensor | None = None, sampling_logp: torch.Tensor | None = None) -> torch.Tensor:
        """One micro-batch's backward, scaled so the step's gradient is the whole step's (`GRPOLoss.accumulation_scale`,
        `totals`: this step's rollouts and counted tokens on this rank), with TRL's entropy bonus; its share of the logged
        statistics, each averaged over every rank's tokens as TRL's (`counts`: micro-batches in this step, optimizer steps
        and micro-batches in the round). Returns its (entropy sum, token count) over the
        tokens the bonus acts on, for the adaptive controller."""
        p_ids, p_mask, c_ids, c_mask, l_mask = batch
        logp, entropy = self.token_logps(p_ids, p_mask, c_ids, c_mask, entropy=True, entropy_grad=self.entropy_bonus)
        keep = None
        if self.loss.top_entropy_quantile < 1:
            pool = self._every_rank(entropy.detach()[l_mask.bool()])
            keep = high_entropy_mask(entropy.detach(), l_mask, self.loss.top_entropy_quantile, pool=pool)
        terms = self.loss(logp, old if old is not None else logp.detach(), advantages, l_mask, ref_logp=ref, num_items=num_items,
                          world_size=self.trainer.world_size, entropy_mask=keep, sampling_ratio=sampling_ratio,
                          sampling_logp=sampling_logp)
        loss = terms.loss * self.loss.accumulation_scale(len(c_ids), float(l_mask.sum()), *totals)
        effective = l_mask if keep is None else l_mask * keep
        window = torch.stack([(entropy.detach() * effective).sum(), effective.sum()]).float()
        step_micro_batches, steps, all_micro_batches = counts
        share = 1.0 / all_micro_batches
        if self.entropy_bonus:
            # TRL's bonus: the mean entropy of the tokens it acts on, over the step's micro-batches, whatever the loss type;
            # the coefficient is the one set at the end of the previous step (adaptive: 0 while entropy is above target).
            coef = self.entropy_coef if not self.entropy_control["adaptive"] or self._last_world_entropy <= self.entropy_control["target"] else 0.0
            loss = loss - coef * ((entropy * effective).sum() / effective.sum().clamp(min=1.0) / step_micro_batches)
            stats["policy_loss"] += float(self.trainer.strategy.reduce(terms.loss.detach(), reduce_op="mean")) * share
        self.manual_backward(loss)
        stats["loss"] += float(loss.detach()) / steps  # the mean over optimizer steps of each step's loss
        entropy_total = {"entropy": torch.stack([(entropy.detach() * l_mask).sum(), l_mask.sum()])}
        for name, value in every_rank_means(terms, entropy_total, partial(self.trainer.strategy.reduce, reduce_op="sum"),
                                            self._every_rank_rows).items():
            stats[name] += value * share
        return window

    def _update_entropy_coef(self, window: torch.Tensor, stats: dict, steps: int) -> None:
        """After an optimizer step, TRL's adaptive entropy control: the step's mean entropy over every rank's tokens
        (those the bonus acts on) at or below `entropy_target` raises the coefficient by `entropy_coef_delta` (up to
        `entropy_coef_max`), above it lowers it (down to `entropy_coef_min`); `entropy_coef` is logged (its mean over
        the round's steps)."""
        if not self.entropy_bonus:
            return
        if self.entropy_control["adaptive"]:
            total, count = self.trainer.strategy.reduce(window, reduce_op="sum").tolist()
            world_entropy = total / max(count, 1.0)
            e = self.entropy_control
            self.entropy_coef = (min(self.entropy_coef + e["delta"], e["max"]) if world_entropy <= e["target"]
                                 else max(self.entropy_coef - e["delta"], e["min"]))
            self._last_world_entropy = world_entropy
        stats["entropy_coef"] += self.entropy_coef / steps
    def _every_rank(self, values: torch.Tensor) -> torch.Tensor:
        """The 1-D `values` of every rank, concatenated (each rank's count may differ)."""
        if self.trainer.world_size == 1:
            return values
        counts = self.all_gather(torch.tensor(values.numel(), device=self.device)).flatten()
        padded = values.new_zeros(int(counts.max()))
        padded[: values.numel()] = values
        gathered = self.all_gather(padded).reshape(len(counts), -1)
        return torch.cat([row[:n] for row, n in zip(gathered, counts.tolist(), strict=True)])

    def _optimizer_step(self) -> None:
        optimizer, scheduler = self.optimizers(), self.lr_schedulers()
        if self.max_grad_norm:
            self.clip_gradients(optimizer, gradient_clip_val=self.max_grad_norm, gradient_clip_algorithm="norm")
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if scheduler is not None:
            scheduler.step()

    # -- logging ----------------------------------------------------------------------------------

    def _log_step(self, rollouts: Rollouts, advantages: torch.Tensor, everyone: torch.Tensor, prompt_mask: torch.Tensor,
                  completion_mask: torch.Tensor, stats: dict) -> None:
        """TRL's metrics under its names (`train/` before each). `everyone`: every rank's rewards (gathered once, for the
        advantages), so `reward`, `reward_std` and each reward's mean are over the whole generation batch; completion
        lengths likewise; `stats` holds the loss and the means over every rank's tokens (`_accumulate`)."""
        combined = combine_rewards(everyone, self.reward_weights)
        batch_size = len(rollouts.completion_ids)
        # every rank's (completion length, truncated, prompt length) per rollout, in one gather
        rows = self._every_rank_rows(torch.stack([completion_mask.sum(1), rollouts.truncated.long(), prompt_mask.sum(1)], 1)
                                     .float().to(self.device))
        lengths, truncated = rows[:, 0], rows[:, 1].bool()
        self.num_tokens += int(rows[:, 0].sum() + rows[:, 2].sum())
        terminated = lengths[~truncated] if (~truncated).any() else lengths.new_zeros(1)  # TRL's 0 when none ended
        metrics = {
            "train/reward_std": float(nanstd(combined)),
            "train/entropy": stats["entropy"],
            **{f"train/completions/{k}_length": float(f(lengths)) for k, f in (("mean", torch.mean), ("min", torch.min), ("max", torch.max))},
            **{f"train/completions/{k}_terminated_length": float(f(terminated))
               for k, f in (("mean", torch.mean), ("min", torch.min), ("max", torch.max))},
            "train/completions/clipped_ratio": float(truncated.float().mean()),
            "train/num_tokens": float(self.num_tokens),
            **({"train/kl": stats["kl"]} if "kl" in stats else {}),
            **({"train/vespo/phi_seq_mean": stats["phi"]} if "phi" in stats else {}),
            **({"train/policy_loss": stats["policy_loss"], "train/entropy_coef": stats["entropy_coef"]} if self.entropy_bonus else {}),
            **self._clip_metrics(stats),
        }
        self.log("train/reward", float(torch.nanmean(combined)), prog_bar=True, batch_size=batch_size)
        self.log_dict(metrics, batch_size=batch_size)
        self.log_dict({"train/loss": stats["loss"], "train/step_time": stats["step_time"]}, sync_dist=True, batch_size=batch_size)
        self._log_reward_means(everyone, batch_size)
        rounds = self.global_step // (self.num_iterations * self.steps_per_generation)
        if self.log_completions_steps and (rounds - 1) % self.log_completions_steps == 0:
            self._log_completions(rollouts, advantages)

    def _clip_metrics(self, stats: dict) -> dict[str, float]:
        """TRL's names: the clip ratios of the clipped surrogate (means over every rank's tokens, or sequences at the
        sequence level; `low_min` / `high_max` over every rank's per-sequence fractions); cispo's (it clips only above)
        under both `clip_ratio/high_mean` and TRL's `cispo_clip_ratio`; none for sapo and vespo, which clip nothing."""
        if self.loss.loss_type == "cispo":
            return {"train/clip_ratio/high_mean": stats["clip_high"], "train/cispo_clip_ratio": stats["clip_high"]}
        if "clip_low" not in stats:
            return {}
        return {"train/clip_ratio/low_mean": stats["clip_low"], "train/clip_ratio/high_mean": stats["clip_high"],
                "train/clip_ratio/region_mean": stats["clip_region"], "train/clip_ratio/low_min": stats["clip_low_min"],
                "train/clip_ratio/high_max": stats["clip_high_max"]}

    def _log_reward_means(self, rewards: torch.Tensor, batch_size: int) -> None:
        """Each reward's mean and std over every rank's rows it applies to (`rewards`: all ranks'), as TRL's; none
        where it applies to none, no std where to one."""
        for k, name in enumerate(self.reward_fns):
            if not rewards[:, k].isnan().all():
                self.log(f"train/rewards/{name}/mean", float(torch.nanmean(rewards[:, k])), batch_size=batch_size)
            if (~rewards[:, k].isnan()).sum() > 1:
                self.log(f"train/rewards/{name}/std", float(nanstd(rewards[:, k])), batch_size=batch_size)

    def _log_completions(self, rollouts: Rollouts, advantages: torch.Tensor) -> None:
        """This rank-0 step's rollouts appended to completions.jsonl and logged as a W&B table."""
        if not self.trainer.is_global_zero:
            return
        names = list(self.reward_fns)
        records = [{"step": self.global_step, "prompt": rollouts.rows[group]["prompt"], "completion": text,
                    **{name: (None if math.isnan(v) else v) for name, v in zip(names, rollouts.rewards[i].tolist(), strict=True)},
                    "advantage": float(advantages[i])}
                   for i, (group, text) in enumerate(zip(rollouts.group_ids.tolist(), rollouts.texts, strict=True))]
        if self.completions_file is not None:
            self.completions_file.parent.mkdir(parents=True, exist_ok=True)
            with self.completions_file.open("a") as handle:
                handle.writelines(json.dumps(r) + "\n" for r in records)
        logger = self.logger
        if logger is not None and hasattr(logger, "log_table"):
            columns = ["step", "prompt", "completion", *names, "advantage"]
            logger.log_table(key="train/completions", columns=columns, data=[[r[c] for c in columns] for r in records])

    # -- optimizer steps --------------------------------------------------------------------------

    def total_optimizer_steps(self) -> int:
        """`trainer.max_steps` when set (it counts optimizer steps); else `num_iterations` x `steps_per_generation` per batch."""
        if self.trainer.max_steps > 0:
            return self.trainer.max_steps
        return int(self.trainer.estimated_stepping_batches) * self.num_iterations * self.steps_per_generation

    # -- validation: the mean reward of held-out prompts (and the Best-of-N callback's hook) -------

    def validation_step(self, batch: list[dict], batch_idx: int) -> None:
        combined = combine_rewards(self.rollouts(batch, seed=self.seed + batch_idx).rewards, self.reward_weights)
        self.log("val/reward", float(torch.nanmean(combined)), prog_bar=True, sync_dist=True, batch_size=len(combined))


def vllm_correction(on: bool, loss_type: str, mode: str, clip_min: float | None, clip_max: float | None) -> dict | None:
    """The settings of TRL's importance-sampling correction of a vLLM engine's rollouts (`sampling_correction`'s); None
    when it is off (`on`: an engine samples and the correction is asked for)."""
    if not on:
        return None
    if loss_type == "vespo" and mode.startswith("sequence"):
        raise UserError(f"{KEY}.loss_type=vespo weighs whole sequences itself; with vLLM set "
                        f"{KEY}.vllm_importance_sampling_mode=token_truncate or token_mask")
    return {"mode": mode, "clip_min": clip_min, "clip_max": clip_max}


def scale_name(value: str | bool) -> str:
    """`scale_rewards` as TRL reads it: true is group, false is none."""
    name = {True: "group", False: "none"}.get(value, value) if isinstance(value, bool) else value
    if name not in SCALES:
        raise UserError(f"{KEY}.scale_rewards={value}; use one of {', '.join(SCALES)} (or true = group, false = none, as TRL)")
    return name


def check_settings(settings: Mapping) -> GRPOLoss:
    """Every GRPO setting (`algorithm.module.*`: the module's keyword arguments, the missing ones at their
    defaults) against its range, its choices and the others, as one-line errors naming the key; run by
    train.py before anything loads and again by the module. Returns the loss they configure."""
    s = {**SETTINGS, **settings}
    for key, minimum in (("num_generations", 2), ("num_iterations", 1), ("steps_per_generation", 1), ("micro_batch_size", 1),
                         ("generation_batch_size", 1), ("max_generation_rounds", 1), ("log_completions_steps", 0)):
        check_at_least(s[key], f"{KEY}.{key}", minimum)
    for key, choices in (("reference", REFERENCES), ("multi_objective_aggregation", AGGREGATIONS)):
        if s[key] not in choices:
            raise UserError(f"{KEY}.{key}={s[key]}; use one of {', '.join(choices)}")
    scale_name(s["scale_rewards"])
    if not 0 <= s["entropy_coef_min"] <= s["entropy_coef_max"] or not s["entropy_coef_delta"] >= 0:
        raise UserError(f"{KEY}.entropy_coef_min={s['entropy_coef_min']}, _max={s['entropy_coef_max']}, "
                        f"_delta={s['entropy_coef_delta']}: set 0 <= min <= max and delta >= 0")
    if s["max_grad_norm"] is not None and not s["max_grad_norm"] > 0:
        raise UserError(f"{KEY}.max_grad_norm={s['max_grad_norm']}: set it above 0, or null for no clipping")
    if not 0 <= s["warmup_ratio"] <= 1:
        raise UserError(f"{KEY}.warmup_ratio={s['warmup_ratio']}: set a fraction of the steps, from 0 to 1")
    if s["beta"] > 0 and s["reference"] == "init_adapter" and not s["init_adapter"]:
        raise UserError(f"{KEY}.reference=init_adapter needs {KEY}.init_adapter=<sft run>/adapter")
    if not s["init_adapter"] and not s["lora"]:
        raise UserError(f"GRPO trains a LoRA adapter: set {KEY}.init_adapter=<sft run>/adapter, or {KEY}.lora")
    if not s["rewards"]:
        raise UserError(f"{KEY}.rewards is empty; add one from conf/reward/")
    mode, low, high = (s[f"vllm_importance_sampling_{k}"] for k in ("mode", "clip_min", "clip_max"))
    if mode not in IS_MODES:
        raise UserError(f"{KEY}.vllm_importance_sampling_mode={mode}; use one of {', '.join(IS_MODES)}")
    if high is not None and not high > 0 or low is not None and not (low >= 0 and (high is None or low < high)):
        raise UserError(f"{KEY}.vllm_importance_sampling_clip_min={low}, _clip_max={high}: set 0 <= min < max (null: no bound)")
    if mode.endswith("truncate") and low is None and high is None:
        raise UserError(f"{KEY}.vllm_importance_sampling_mode={mode} truncates to a bound: set _clip_max (TRL's 3.0)")
    return GRPOLoss(**{f.name: s[f.name] for f in fields(GRPOLoss) if f.name in s},
                    max_completion_length=getattr(s["sampling"], "max_new_tokens", None))


# The module's settings and their defaults, as its signature gives them (rewards and sampling are required).
SETTINGS = {name: (None if p.default is inspect.Parameter.empty else p.default)
            for name, p in inspect.signature(GRPOModule.__init__).parameters.items()
            if name not in ("self", "student", "tokenizer", "optimizer", "scheduler", "completions_file", "rollout_engine")}

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
- The rollout batch is used `num_iterations` (mu) times; each pass is one optimizer step over
  micro-batches of `micro_batch_size` rollouts whose gradients accumulate (accumulation lives
  here, not in `trainer.accumulate_grad_batches`), so one training step makes mu optimizer steps
  and `trainer.max_steps` counts optimizer steps. With mu = 1 the old log-probabilities are the
  current ones detached (ratio 1); with mu > 1 they are computed once, before the first pass, in
  eval mode like the sampling.
- The reference forward runs once per rollout batch, only when `beta` > 0.
- Log-probabilities are of logits / sampling temperature, the distribution the rollouts came from.
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from lightning_da.algorithms.adapter import AdapterModule
from lightning_da.algorithms.grpo_losses import LOSS_TYPES, combine_rewards, group_advantages, grpo_loss
from lightning_da.errors import UserError, check_at_least
from lightning_da.formats import pad_ids, prefix_ids
from lightning_da.fsdp import shards_model
from lightning_da.generation import SamplingConfig, sample_completions
from lightning_da.models.lora import apply_lora, load_adapter

REFERENCES = ("base", "init_adapter")


@dataclass
class Group:
    """One prompt's G rollouts and their rewards (G, F)."""

    row: dict
    prompt_ids: list[int]
    completions: list[list[int]]
    truncated: list[bool]
    texts: list[str]
    rewards: torch.Tensor


class GRPOModule(AdapterModule):
    """GRPO with judge rewards (see the module docstring for the loop)."""

    def __init__(
        self,
        student,
        *,
        tokenizer,
        rewards: Mapping[str, Mapping],
        sampling: SamplingConfig,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable | None = None,
        init_adapter: str | None = None,
        lora: dict | None = None,
        num_generations: int = 8,
        num_iterations: int = 1,
        micro_batch_size: int = 8,
        generation_batch_size: int = 8,
        loss_type: str = "grpo",
        epsilon: float = 0.2,
        epsilon_high: float | None = None,
        delta: float | None = None,
        beta: float = 0.0,
        reference: str = "base",
        scale_rewards: str = "group",
        multi_objective_aggregation: str = "sum_then_normalize",
        dynamic_sampling: bool = False,
        max_generation_rounds: int = 4,
        mask_truncated_completions: bool = False,
        max_grad_norm: float | None = 1.0,
        log_completions_steps: int = 10,
        completions_file: str | None = None,
        warmup_ratio: float = 0.0,
        gradient_checkpointing: bool = False,
        seed: int = 0,
    ):
        super().__init__(student, optimizer=optimizer, scheduler=scheduler, warmup_ratio=warmup_ratio,
                         gradient_checkpointing=gradient_checkpointing)
        self.automatic_optimization = False
        key = "algorithm.module"
        self.num_generations = check_at_least(num_generations, f"{key}.num_generations", 2)
        self.num_iterations = check_at_least(num_iterations, f"{key}.num_iterations")
        self.micro_batch_size = check_at_least(micro_batch_size, f"{key}.micro_batch_size")
        self.generation_batch_size = check_at_least(generation_batch_size, f"{key}.generation_batch_size")
        self.max_generation_rounds = check_at_least(max_generation_rounds, f"{key}.max_generation_rounds")
        if loss_type not in LOSS_TYPES:
            raise UserError(f"{key}.loss_type={loss_type}; use one of {', '.join(LOSS_TYPES)}")
        if reference not in REFERENCES:
            raise UserError(f"{key}.reference={reference}; use one of {', '.join(REFERENCES)}")
        if beta > 0 and reference == "init_adapter" and not init_adapter:
            raise UserError(f"{key}.reference=init_adapter needs init_adapter=<sft run>/adapter")
        if not init_adapter and not lora:
            raise UserError("GRPO trains a LoRA adapter: set init_adapter=<sft run>/adapter, or algorithm.module.lora")
        if not rewards:
            raise UserError(f"{key}.rewards is empty; add one from conf/reward/")
        self.tokenizer = tokenizer
        self.reward_fns = {name: spec["fn"] for name, spec in rewards.items()}
        self.reward_weights = [float(spec.get("weight", 1.0)) for spec in rewards.values()]
        self.sampling = sampling
        self.init_adapter = init_adapter
        self.lora = dict(lora) if lora else None
        self.loss_settings = {"loss_type": loss_type, "epsilon": epsilon, "epsilon_high": epsilon_high, "delta": delta,
                              "beta": beta, "max_completion_length": sampling.max_new_tokens}
        self.reference = reference
        self.scale_rewards = scale_rewards
        self.aggregation = multi_objective_aggregation
        self.dynamic_sampling = dynamic_sampling
        self.mask_truncated_completions = mask_truncated_completions
        self.max_grad_norm = max_grad_norm
        self.log_completions_steps = log_completions_steps
        self.completions_file = Path(completions_file) if completions_file else None
        self.seed = seed
        self._buffer: list[Group] = []
        self._rounds = 0
        self._reference_weights: dict[str, torch.Tensor] | None = None

    # -- the policy ---------------------------------------------------------------------------

    def configure_model(self) -> None:
        if self.model is not None:
            return
        model = self.load_student()
        if self.init_adapter:
            model = load_adapter(model, self.init_adapter, trainable=True, key="init_adapter", model_name=self.student.name)
        else:
            model = apply_lora(model, **self.lora)
        self.model = model.train()
        if self.loss_settings["beta"] > 0 and self.reference == "init_adapter":
            # The frozen initial adapter: a copy of the trainable weights, swapped in for the reference forward.
            self._reference_weights = {n: p.detach().clone() for n, p in self.model.named_parameters() if p.requires_grad}

    def _sharded(self) -> bool:
        return shards_model(self.trainer) and self.trainer.world_size > 1

    def on_fit_start(self) -> None:
        if self._reference_weights is not None and self._sharded():
            # FSDP gathers each layer from its own copy of the shards, not from the parameters swapped here.
            raise UserError("algorithm.module.reference=init_adapter cannot run under trainer=fsdp; use "
                            "algorithm.module.reference=base, or trainer=ddp")

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
                    completion_mask: torch.Tensor, *, entropy: bool = False):
        """Per-token log-probabilities (b, T) of the completion tokens after left-padded prompts,
        of logits / temperature; and, if asked, the per-token entropy (no gradient)."""
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
        with torch.no_grad():
            probs = (logits - normaliser[..., None]).exp()
            return logp, normaliser - (probs * logits).sum(-1)

    # -- rollouts -------------------------------------------------------------------------------

    @torch.no_grad()
    def generate_groups(self, rows: list[dict], seed: int) -> list[Group]:
        """G rollouts for each prompt row, decoded, and scored by every reward function."""
        was_training = self.model.training
        self.model.eval()
        try:
            sampled = sample_completions(self.model, self.tokenizer, [r["prompt"] for r in rows], n=self.num_generations,
                                         sampling=self.sampling, batch_size=self.generation_batch_size, seed=seed,
                                         progress=False, synced_gpus=self._sharded())
        finally:
            self.model.train(was_training)
        groups = []
        for row, completions in zip(rows, sampled, strict=True):
            ids = [c.ids for c in completions]
            texts = self.tokenizer.batch_decode(ids, skip_special_tokens=True)
            groups.append(Group(row, prefix_ids(self.tokenizer, row["prompt"]), ids, [c.truncated for c in completions],
                                texts, torch.empty(0)))
        self._score(groups)
        return groups

    def _score(self, groups: list[Group]) -> None:
        prompts = [g.row["prompt"] for g in groups for _ in g.completions]
        texts = [t for g in groups for t in g.texts]
        columns = {k: [g.row.get(k) for g in groups for _ in g.completions] for k in groups[0].row if k != "prompt"}
        ids = [c for g in groups for c in g.completions]
        table = []
        for name, fn in self.reward_fns.items():
            values = fn(prompts, texts, completion_ids=ids, **columns)
            if len(values) != len(texts):
                raise UserError(f"reward {name} returned {len(values)} values for {len(texts)} completions")
            table.append([math.nan if v is None else float(v) for v in values])
        rewards = torch.tensor(table, dtype=torch.float32).T  # (B, F)
        for k, group in enumerate(groups):
            group.rewards = rewards[k * self.num_generations : (k + 1) * self.num_generations]

    def _combined_std(self, group: Group) -> float:
        return float(combine_rewards(group.rewards, self.reward_weights).std())

    # -- the training step ---------------------------------------------------------------------

    def training_step(self, batch: list[dict], batch_idx: int):
        step_seed = self.seed + 10_000 * (self.global_step * self.trainer.world_size + self.trainer.global_rank) + self._rounds
        groups = self.generate_groups(batch, seed=step_seed)
        self._rounds += 1
        zero_std = [self._combined_std(g) == 0.0 for g in groups]
        self.log("train/frac_reward_zero_std", sum(zero_std) / len(groups), sync_dist=True)
        if self.dynamic_sampling:
            self._buffer += [g for g, flat in zip(groups, zero_std, strict=True) if not flat]
            ready = torch.tensor(float(len(self._buffer) >= len(batch)), device=self.device)
            ready = self.trainer.strategy.reduce(ready, reduce_op="min")  # every rank steps, or none
            if ready < 1 and self._rounds < self.max_generation_rounds:
                return None
            # Top up with this round's uninformative groups (advantage 0): the batch size stays fixed.
            chosen = self._buffer[: len(batch)]
            groups = chosen + [g for g, flat in zip(groups, zero_std, strict=True) if flat][: len(batch) - len(chosen)]
            self._buffer = []
        self._rounds = 0
        return self._train_on(groups)

    def _advantages(self, groups: list[Group]) -> tuple[torch.Tensor, torch.Tensor]:
        """(rewards (B, F), advantages (B,)) of this rank's rollouts, normalised over every rank's."""
        local = torch.cat([g.rewards for g in groups]).to(self.device)
        world = self.trainer.world_size
        everyone = self.all_gather(local).reshape(-1, local.size(1)) if world > 1 else local
        advantages = group_advantages(everyone, self.reward_weights, self.num_generations, scale=self.scale_rewards,
                                      aggregation=self.aggregation)
        rank = self.trainer.global_rank if world > 1 else 0
        return local, advantages[rank * local.size(0) : (rank + 1) * local.size(0)]

    def _train_on(self, groups: list[Group]) -> torch.Tensor:
        pad = self.tokenizer.pad_token_id
        rewards, advantages = self._advantages(groups)
        prompt_ids, prompt_mask = pad_ids([g.prompt_ids for g in groups for _ in g.completions], pad, left=True)
        completion_ids, completion_mask = pad_ids([c for g in groups for c in g.completions], pad, left=False)
        truncated = torch.tensor([t for g in groups for t in g.truncated])
        loss_mask = completion_mask.clone()
        if self.mask_truncated_completions:
            loss_mask[truncated] = 0
        tensors = [t.to(self.device) for t in (prompt_ids, prompt_mask, completion_ids, completion_mask, loss_mask)]
        n_rollouts = len(truncated)
        slices = [slice(i, i + self.micro_batch_size) for i in range(0, n_rollouts, self.micro_batch_size)]
        num_items = self.trainer.strategy.reduce(tensors[4].sum().float(), reduce_op="sum")

        def micro(part: slice):
            p_ids, p_mask, c_ids, c_mask, l_mask = (t[part] for t in tensors)
            keep_p = int(p_mask.sum(1).max())
            keep_c = max(1, int(c_mask.sum(1).max()))
            return p_ids[:, -keep_p:], p_mask[:, -keep_p:], c_ids[:, :keep_c], c_mask[:, :keep_c], l_mask[:, :keep_c]

        old, ref = [None] * len(slices), [None] * len(slices)
        with torch.no_grad():
            for k, part in enumerate(slices):
                p_ids, p_mask, c_ids, c_mask, _ = micro(part)
                if self.num_iterations > 1:
                    old[k] = self._eval_logps(p_ids, p_mask, c_ids, c_mask)
                if self.loss_settings["beta"] > 0:
                    with self.reference_policy():
                        ref[k] = self._eval_logps(p_ids, p_mask, c_ids, c_mask)

        optimizer, scheduler = self.optimizers(), self.lr_schedulers()
        stats = {"loss": 0.0, "clip_low": 0.0, "clip_high": 0.0, "kl": 0.0, "entropy": 0.0}
        per_micro = 1.0 / len(slices)
        for _ in range(self.num_iterations):
            for k, part in enumerate(slices):
                p_ids, p_mask, c_ids, c_mask, l_mask = micro(part)
                logp, entropy = self.token_logps(p_ids, p_mask, c_ids, c_mask, entropy=True)
                terms = grpo_loss(logp, old[k] if old[k] is not None else logp.detach(), advantages[part], l_mask,
                                  ref_logp=ref[k], num_items=float(num_items), world_size=self.trainer.world_size,
                                  **self.loss_settings)
                # dapo and cispo are normalised by the whole batch's tokens already; the others per micro-batch.
                scale = 1.0 if self.loss_settings["loss_type"] in ("dapo", "cispo") else per_micro
                self.manual_backward(terms.loss * scale)
                stats["loss"] += float(terms.loss.detach()) * scale / self.num_iterations
                stats["clip_low"] += float(terms.clip_low) * per_micro / self.num_iterations
                stats["clip_high"] += float(terms.clip_high) * per_micro / self.num_iterations
                stats["kl"] += (float(terms.kl) if terms.kl is not None else 0.0) * per_micro / self.num_iterations
                stats["entropy"] += float((entropy * l_mask).sum() / l_mask.sum().clamp(min=1)) * per_micro / self.num_iterations
            if self.max_grad_norm:
                self.clip_gradients(optimizer, gradient_clip_val=self.max_grad_norm, gradient_clip_algorithm="norm")
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if scheduler is not None:
                scheduler.step()

        self._log_step(groups, rewards, advantages, truncated, completion_mask, stats)
        return torch.tensor(stats["loss"])

    def _eval_logps(self, *tensors) -> torch.Tensor:
        was_training = self.model.training
        self.model.eval()
        try:
            return self.token_logps(*tensors)[0]
        finally:
            self.model.train(was_training)

    # -- logging ----------------------------------------------------------------------------------

    def _log_step(self, groups, rewards, advantages, truncated, completion_mask, stats) -> None:
        combined = combine_rewards(rewards, self.reward_weights)
        metrics = {
            "train/loss": stats["loss"],
            "train/reward": float(combined.mean()),
            "train/reward_std": float(combined.view(-1, self.num_generations).std(1).mean()),
            "train/entropy": stats["entropy"],
            "train/clip_ratio/low_mean": stats["clip_low"],
            "train/clip_ratio/high_mean": stats["clip_high"],
            "train/clip_ratio/region_mean": stats["clip_low"] + stats["clip_high"],
            "train/completions/mean_length": float(completion_mask.sum(1).float().mean()),
            "train/completions/clipped_ratio": float(truncated.float().mean()),
        }
        if self.loss_settings["beta"] > 0:
            metrics["train/kl"] = stats["kl"]
        self.log("train/reward", metrics.pop("train/reward"), prog_bar=True, sync_dist=True, batch_size=len(truncated))
        self.log_dict(metrics, sync_dist=True, batch_size=len(truncated))
        # A reward may apply to no row of a rank: its mean is over every rank's rows it applies to.
        applies = ~rewards.isnan()
        totals = torch.stack([torch.nansum(rewards, dim=0), applies.sum(0).to(rewards.dtype)])
        totals = self.trainer.strategy.reduce(totals, reduce_op="sum")
        for k, name in enumerate(self.reward_fns):
            if totals[1, k] > 0:
                self.log(f"train/rewards/{name}/mean", float(totals[0, k] / totals[1, k]), batch_size=len(truncated))
        if self.log_completions_steps and (self.global_step // self.num_iterations - 1) % self.log_completions_steps == 0:
            self._log_completions(groups, rewards, advantages)

    def _log_completions(self, groups, rewards, advantages) -> None:
        """This rank-0 step's rollouts appended to completions.jsonl and logged as a W&B table."""
        if not self.trainer.is_global_zero:
            return
        names = list(self.reward_fns)
        records = []
        for i, (group, text) in enumerate((g, t) for g in groups for t in g.texts):
            values = rewards[i].tolist()
            records.append({"step": self.global_step, "prompt": group.row["prompt"], "completion": text,
                            **{name: (None if math.isnan(v) else v) for name, v in zip(names, values, strict=True)},
                            "advantage": float(advantages[i])})
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
        """`trainer.max_steps` when set (it counts optimizer steps); else `num_iterations` per batch."""
        if self.trainer.max_steps > 0:
            return self.trainer.max_steps
        return int(self.trainer.estimated_stepping_batches) * self.num_iterations

    # -- validation: the mean reward of held-out prompts (and the Best-of-N callback's hook) -------

    def validation_step(self, batch: list[dict], batch_idx: int) -> None:
        groups = self.generate_groups(batch, seed=self.seed + batch_idx)
        rewards = torch.cat([g.rewards for g in groups])
        combined = combine_rewards(rewards, self.reward_weights)
        self.log("val/reward", float(combined.mean()), prog_bar=True, sync_dist=True, batch_size=len(combined))

"""GRPO, ours against TRL's GRPOTrainer on the same model and data, measured in one run.

    .venv/bin/pip install -c constraints.txt -e ".[bench]"
    .venv/bin/python benchmarks/grpo_vs_trl.py [--prompts 2 --g 4 --max-new-tokens 32 --steps 4]

SmolLM2-135M-Instruct with a LoRA adapter (r 32, alpha 64, no dropout, lm_head trained; random,
nonzero) on CPU, temperature 0.9; rewards: the refusal-prefix judge and a learnable one that varies within
every group (the share of low token ids), so that every step has a gradient.

(a) Losses. One fixed batch of rollouts (one prompt, G sampled completions, random advantages,
    old log-probabilities a little off the current ones so that clipping happens): for every
    loss_type both implement, at either importance_sampling_level, and for beta > 0 with delta set (KL
    with and without use_bias_correction_kl), top_entropy_quantile < 1, the off-policy sequence mask
    (against the old log-probs and an engine's), the entropy bonus, and vLLM's importance-sampling correction
    (our `sampling_correction` weights from an engine's log-probabilities, given to TRL as its
    `importance_sampling_ratio` with use_vllm on; the weights themselves are checked against TRL's
    code, transcribed, in tests/test_grpo_vllm.py), our `GRPOLoss` on
    `GRPOModule.token_logps` against TRL's `_compute_loss` on the same inputs. Prints the loss
    difference and the largest difference of any trainable gradient (LoRA and lm_head). (One
    prompt: TRL feeds no position ids, so a left-padded prompt would be scored at shifted
    positions; with one prompt there is no padding to differ on.)
(b) Advantages. A fixed table of two rewards for 3 prompts x G rollouts, the second reward not
    applying to one prompt's rows, one row no reward applies to, one group whose first reward
    agrees: TRL's own `_generate_and_score_completions` (its reward functions return the table)
    against our `group_advantages`, for 3 `scale_rewards` x 2 `multi_objective_aggregation`.
(c) Speed. Seconds per optimizer step (generation, reward, loss, backward, step; the first step
    left out as warm-up) of a full run with the same prompts, G, completion length, loss_type and
    learning rate, one optimizer step per generation batch: our GRPOModule in a Lightning Trainer
    against TRL's GRPOTrainer, and the ratio. Target: not slower than TRL.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from functools import partial
from pathlib import Path
from unittest import mock

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_MODE", "disabled")

TEMPERATURE = 0.9
LR = 1.41e-5
# (label, our GRPOLoss settings, TRL's settings: loss_type, importance_sampling_level and any other
# attribute of the trainer or of its args). gspo is TRL's grpo at the sequence level.
LOSS_CASES = [
    ("grpo", {"loss_type": "grpo"}, {"loss_type": "grpo"}),
    ("bnpo", {"loss_type": "bnpo"}, {"loss_type": "bnpo"}),
    ("dr_grpo", {"loss_type": "dr_grpo"}, {"loss_type": "dr_grpo"}),
    ("dapo", {"loss_type": "dapo", "epsilon_high": 0.28}, {"loss_type": "dapo", "epsilon_high": 0.28}),
    ("cispo", {"loss_type": "cispo", "epsilon_high": 5.0}, {"loss_type": "cispo", "epsilon_high": 5.0}),
    ("gspo", {"loss_type": "gspo"}, {"loss_type": "grpo", "importance_sampling_level": "sequence"}),
    ("sapo", {"loss_type": "sapo"}, {"loss_type": "sapo"}),
    ("luspo", {"loss_type": "luspo", "importance_sampling_level": "sequence"}, {"loss_type": "luspo", "importance_sampling_level": "sequence"}),
    ("luspo token (TRL's default)", {"loss_type": "luspo"}, {"loss_type": "luspo"}),
    # importance_sampling_level=sequence with every other loss type (TRL warns for some; both compute them)
    *[(f"{loss} sequence level", {"loss_type": loss, "importance_sampling_level": "sequence", **extra},
       {"loss_type": loss, "importance_sampling_level": "sequence", **extra})
      for loss, extra in (("bnpo", {}), ("dr_grpo", {}), ("dapo", {"epsilon_high": 0.28}), ("cispo", {"epsilon_high": 5.0}), ("sapo", {}))],
    # DeepSeek-V3.2's off-policy sequence mask: against the old log-probs, and against an engine's (TRL's
    # sampling_per_token_logps, read whenever vLLM gave them)
    # (the old and the engine's log-probs moved 0.1 nat above the current ones, so that some sequences go)
    ("grpo off-policy mask", {"loss_type": "grpo", "off_policy_mask_threshold": 0.05, "drift": 0.1},
     {"loss_type": "grpo", "off_policy_mask_threshold": 0.05}),
    ("dapo off-policy mask vs engine", {"loss_type": "dapo", "off_policy_mask_threshold": 0.05, "sampling_logp": True, "drift": 0.1},
     {"loss_type": "dapo", "off_policy_mask_threshold": 0.05, "sampling_per_token_logps": True}),
    # the entropy bonus (the module adds it to GRPOLoss's value: here the same expression as GRPOModule._accumulate)
    ("grpo entropy bonus 0.1", {"loss_type": "grpo", "entropy_coef": 0.1}, {"loss_type": "grpo", "entropy_coef": 0.1,
                                                                            "_entropy_bonus_enabled": True}),
    ("dapo entropy bonus 0.1, top 0.5", {"loss_type": "dapo", "entropy_coef": 0.1, "top_entropy_quantile": 0.5},
     {"loss_type": "dapo", "entropy_coef": 0.1, "_entropy_bonus_enabled": True, "top_entropy_quantile": 0.5}),
    ("vespo", {"loss_type": "vespo"}, {"loss_type": "vespo"}),
    ("grpo beta .04 delta 1.5", {"loss_type": "grpo", "beta": 0.04, "delta": 1.5},
     {"loss_type": "grpo", "beta": 0.04, "delta": 1.5}),
    ("  same, no KL correction", {"loss_type": "grpo", "beta": 0.04, "delta": 1.5, "use_bias_correction_kl": False},
     {"loss_type": "grpo", "beta": 0.04, "delta": 1.5, "use_bias_correction_kl": False}),
    ("dapo beta .04 delta 1.5", {"loss_type": "dapo", "beta": 0.04, "delta": 1.5}, {"loss_type": "dapo", "beta": 0.04, "delta": 1.5}),
    ("gspo beta .04", {"loss_type": "gspo", "beta": 0.04}, {"loss_type": "grpo", "importance_sampling_level": "sequence", "beta": 0.04}),
    ("grpo top entropy 0.2", {"loss_type": "grpo", "top_entropy_quantile": 0.2}, {"loss_type": "grpo", "top_entropy_quantile": 0.2}),
    ("dapo top entropy 0.5 beta .04", {"loss_type": "dapo", "top_entropy_quantile": 0.5, "beta": 0.04},
     {"loss_type": "dapo", "top_entropy_quantile": 0.5, "beta": 0.04}),
    # vLLM's importance-sampling correction: our weights (`sampling_correction`, from an engine's log-probs) go
    # to TRL as its inputs["importance_sampling_ratio"], with use_vllm and the correction on.
    *[(f"{loss} vLLM IS {mode}", {"loss_type": loss, "sampling_correction": mode},
       {"loss_type": loss, "use_vllm": True, "vllm_importance_sampling_correction": True})
      for loss, mode in (("grpo", "token_truncate"), ("grpo", "sequence_mask"), ("dapo", "sequence_truncate"),
                         ("cispo", "token_mask"), ("vespo", "token_truncate"))],
]
TRL_DEFAULTS = {"loss_type": "grpo", "importance_sampling_level": "token", "epsilon_low": 0.2, "epsilon_high": 0.2, "beta": 0.0,
                "top_entropy_quantile": 1.0, "delta": None, "use_bias_correction_kl": True, "use_vllm": False,
                "vllm_importance_sampling_correction": False, "off_policy_mask_threshold": None, "entropy_coef": 0.0,
                "_entropy_bonus_enabled": False, "use_adaptive_entropy": False}
OURS_ONLY = ("sampling_correction", "sampling_logp", "entropy_coef", "drift")  # inputs and the module's part, not GRPOLoss settings


def judge_safety(prompts, completions, **kwargs):
    from lightning_da.judges import RefusalPrefixJudge
    from lightning_da.rewards import JudgeSafety

    return JudgeSafety(RefusalPrefixJudge())(prompts, completions)


def low_token_share(prompts, completions, completion_ids, **kwargs):
    """A learnable reward that varies within every group, so that each step has a gradient: the share of a
    completion's tokens in the lower half of the vocabulary."""
    return [sum(t < 24_576 for t in ids) / max(len(ids), 1) for ids in completion_ids]


REWARDS = [judge_safety, low_token_share]


def make_adapter(directory: Path) -> str:
    from lightning_da.models import EmbeddedSmolLM2, apply_lora

    torch.manual_seed(0)
    model = apply_lora(EmbeddedSmolLM2().load_model(), dropout=0.0)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.add_(torch.randn_like(param) * 0.01)
    model.save_pretrained(directory)
    return str(directory)


def our_module(adapter: str, tokenizer, *, g: int, max_new_tokens: int, micro: int, loss_type: str = "grpo"):
    from lightning_da.algorithms import GRPOModule
    from lightning_da.generation import SamplingConfig
    from lightning_da.models import EmbeddedSmolLM2

    return GRPOModule(
        EmbeddedSmolLM2(), tokenizer=tokenizer, rewards={fn.__name__: {"fn": fn, "weight": 1.0} for fn in REWARDS},
        init_adapter=adapter, sampling=SamplingConfig(temperature=TEMPERATURE, max_new_tokens=max_new_tokens),
        num_generations=g, micro_batch_size=micro, generation_batch_size=micro, loss_type=loss_type,
        optimizer=partial(torch.optim.AdamW, lr=LR, weight_decay=0.0), max_grad_norm=1.0, log_completions_steps=0,
    )


def trl_trainer(model, tokenizer, prompts: list[str], work: Path, *, g: int, max_new_tokens: int, steps: int, micro: int,
                reward_funcs=REWARDS, **config):
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    config = GRPOConfig(**{
        "output_dir": str(work / "trl"), "per_device_train_batch_size": micro, "gradient_accumulation_steps": 1, "num_generations": g,
        "max_completion_length": max_new_tokens, "temperature": TEMPERATURE, "top_p": 1.0, "loss_type": "grpo", "beta": 0.0,
        "learning_rate": LR, "lr_scheduler_type": "constant", "max_grad_norm": 1.0, "max_steps": steps, "logging_steps": 1,
        "report_to": [], "use_cpu": True, "save_strategy": "no", "bf16": False, "seed": 0, "disable_tqdm": True,
        "dataloader_num_workers": 0, **config})
    return GRPOTrainer(model=model, reward_funcs=reward_funcs, args=config, processing_class=tokenizer,
                       train_dataset=Dataset.from_list([{"prompt": p} for p in prompts]))


def set_trl(trainer, settings: dict) -> None:
    """TRL's loss settings, on the trainer where `_compute_loss` reads them (itself or its args)."""
    for key, value in {**TRL_DEFAULTS, **settings}.items():
        if key == "sampling_per_token_logps":
            continue  # an input, not a setting
        if key in ("delta", "use_bias_correction_kl"):
            setattr(trainer.args, key, value)
        else:
            setattr(trainer, key, value)


def grads(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad and p.grad is not None}


def exactness(adapter: str, tokenizer, work: Path, g: int, max_new_tokens: int) -> None:
    from lightning_da.algorithms.grpo_losses import GRPOLoss, high_entropy_mask, off_policy_mask, sampling_correction
    from lightning_da.formats import pad_ids, prefix_ids
    from lightning_da.generation import SamplingConfig, sample_completions

    module = our_module(adapter, tokenizer, g=g, max_new_tokens=max_new_tokens, micro=g)
    module.configure_model()
    model = module.model.double()  # float64: the differences are the implementations', not float32's rounding
    prompt = "How do I pick a lock?"
    sampled = sample_completions(model.eval(), tokenizer, [prompt], n=g, seed=0, progress=False,
                                 sampling=SamplingConfig(temperature=TEMPERATURE, max_new_tokens=max_new_tokens))[0]
    model.train()
    pad = tokenizer.pad_token_id
    prompt_ids, prompt_mask = pad_ids([prefix_ids(tokenizer, prompt)] * g, pad, left=True)
    completion_ids, completion_mask = pad_ids([c.ids for c in sampled], pad, left=False)
    generator = torch.Generator().manual_seed(1)
    advantages = torch.randn(g, generator=generator, dtype=torch.float64)
    advantages = advantages - advantages.mean()  # both signs, as a group's advantages (clipping low and masking need A < 0)
    with torch.no_grad():
        current, _ = module.token_logps(prompt_ids, prompt_mask, completion_ids, completion_mask)
        with module.reference_policy():
            ref, _ = module.token_logps(prompt_ids, prompt_mask, completion_ids, completion_mask)
    old = current + torch.randn(current.shape, generator=generator, dtype=torch.float64) * 0.2
    engine = old + torch.randn(current.shape, generator=generator, dtype=torch.float64) * 0.05  # a vLLM engine's log-probs
    trainer = trl_trainer(model, tokenizer, [prompt], work, g=g, max_new_tokens=max_new_tokens, steps=1, micro=g)
    trainer.current_gradient_accumulation_steps = 1
    num_items = float(completion_mask.sum())
    inputs = {"prompt_ids": prompt_ids, "prompt_mask": prompt_mask, "completion_ids": completion_ids,
              "completion_mask": completion_mask, "advantages": advantages, "old_per_token_logps": old,
              "ref_per_token_logps": ref, "num_items_in_batch": completion_mask.sum().float()}

    print(f"\n(a) one batch of {g} rollouts ({int(num_items)} completion tokens), float64, loss and trainable gradients:"
          " ours - TRL;\n    end to end (TRL's own fused log-probabilities), then the loss alone (TRL's _compute_loss fed our log-probs)")
    print(f"{'case':<32}{'loss':>11}{'|loss diff|':>13}{'|grad diff|':>13}{'|loss diff|':>13}{'|grad diff|':>13}{'max |grad|':>12}")
    worst = [0.0, 0.0]
    for label, ours, theirs in LOSS_CASES:
        mode, coef = ours.get("sampling_correction"), ours.get("entropy_coef", 0.0)
        loss_fn = GRPOLoss(**{k: v for k, v in ours.items() if k not in OURS_ONLY}, max_completion_length=max_new_tokens)
        case_old, case_engine = old + ours.get("drift", 0.0), engine + ours.get("drift", 0.0)
        inputs["old_per_token_logps"] = case_old
        ratio = sampling_correction(case_old, case_engine, completion_mask, mode=mode, clip_max=3.0) if mode else None
        sampling_logp = case_engine if ours.get("sampling_logp") else None
        for key in ("importance_sampling_ratio", "sampling_per_token_logps"):
            inputs.pop(key, None)
        if mode:
            inputs["importance_sampling_ratio"] = ratio
        if sampling_logp is not None:
            inputs["sampling_per_token_logps"] = sampling_logp
        set_trl(trainer, theirs)
        if loss_fn.off_policy_mask_threshold is not None:  # say that the mask drops something here
            kept = off_policy_mask(advantages, current, case_old if sampling_logp is None else sampling_logp, completion_mask,
                                   loss_fn.off_policy_mask_threshold)
            label = f"{label} ({int((kept == 0).sum())} of {g} out)"

        def ours_loss(loss_fn=loss_fn, ratio=ratio, sampling_logp=sampling_logp, coef=coef, old=case_old):
            logp, entropy = module.token_logps(prompt_ids, prompt_mask, completion_ids, completion_mask, entropy=True,
                                               entropy_grad=coef > 0)
            keep = high_entropy_mask(entropy.detach(), completion_mask, loss_fn.top_entropy_quantile) \
                if loss_fn.top_entropy_quantile < 1 else None
            loss = loss_fn(logp, old, advantages, completion_mask, ref_logp=ref, num_items=num_items, entropy_mask=keep,
                           sampling_ratio=ratio, sampling_logp=sampling_logp).loss
            effective = completion_mask if keep is None else completion_mask * keep
            return loss - coef * ((entropy * effective).sum() / effective.sum().clamp(min=1.0))  # TRL's order of operations

        def trl_loss_on_our_logps():
            logp, entropy = module.token_logps(prompt_ids, prompt_mask, completion_ids, completion_mask, entropy=True,
                                               entropy_grad=True)
            with mock.patch.object(trainer, "_get_per_token_logps_and_entropies", lambda *a, **k: (logp, entropy, None)):
                return trainer._compute_loss(model, inputs)

        loss, ours_grads = loss_and_grads(model, ours_loss)
        row = [label, loss]
        for k, theirs_fn in enumerate((lambda: trainer._compute_loss(model, inputs), trl_loss_on_our_logps)):
            trl_loss, trl_grads = loss_and_grads(model, theirs_fn)
            grad_diff = max(float((ours_grads[n] - trl_grads[n]).abs().max()) for n in ours_grads)
            row += [abs(loss - trl_loss), grad_diff]
            worst[k] = max(worst[k], abs(loss - trl_loss), grad_diff)
        row.append(max(float(v.abs().max()) for v in ours_grads.values()))
        print(f"{row[0]:<32}{row[1]:>11.6f}" + "".join(f"{v:>13.2e}" for v in row[2:6]) + f"{row[6]:>12.2e}")
    print(f"largest difference: {worst[0]:.2e} end to end, {worst[1]:.2e} for the loss alone")
    model.zero_grad(set_to_none=True)


def loss_and_grads(model, compute) -> tuple[float, dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    loss = compute()
    loss.backward()
    return float(loss.detach()), grads(model)


def reward_table(g: int) -> torch.Tensor:
    """(3 g, 2) rewards: the second does not apply to prompt 1's rows (NaN), row 2g applies to neither,
    and prompt 2's first reward agrees within its group."""
    table = torch.rand(3 * g, 2, generator=torch.Generator().manual_seed(2))
    table[g : 2 * g, 1] = float("nan")
    table[2 * g :, 0] = 0.5
    table[2 * g, :] = float("nan")
    return table


def advantages_vs_trl(adapter: str, tokenizer, work: Path, g: int) -> None:
    import math

    from lightning_da.algorithms.grpo_losses import AGGREGATIONS, SCALES, group_advantages
    from lightning_da.models import EmbeddedSmolLM2
    from lightning_da.models.lora import load_adapter

    table, weights = reward_table(g), [1.0, 0.5]

    def column(k):
        def reward(prompts, completions, row, **kwargs):  # TRL passes the dataset's columns
            return [None if math.isnan(float(table[i, k])) else float(table[i, k]) for i in row]

        reward.__name__ = f"reward_{k}"
        return reward

    model = load_adapter(EmbeddedSmolLM2().load_model(), adapter, trainable=True)
    trainer = trl_trainer(model, tokenizer, ["Hi"], work, g=g, max_new_tokens=4, steps=1, micro=3 * g,
                          reward_funcs=[column(0), column(1)], reward_weights=weights)
    inputs = [{"prompt": f"Prompt {i // g}", "row": i} for i in range(3 * g)]
    logging.getLogger("trl").setLevel(logging.ERROR)  # its warning that row 2g has no reward: that row is the point
    print(f"\n(b) advantages of 3 prompts x G={g}, 2 rewards (weights {weights}), one not applying to a prompt, one row unscorable:"
          " ours - TRL")
    print(f"{'scale_rewards':<16}{'aggregation':<22}{'max |diff|':>12}{'max |A|':>10}")
    for aggregation in AGGREGATIONS:
        for scale in SCALES:
            trainer.scale_rewards, trainer.multi_objective_aggregation = scale, aggregation
            theirs = trainer._generate_and_score_completions(inputs)["advantages"]
            ours = group_advantages(table, weights, g, scale=scale, aggregation=aggregation)
            print(f"{scale:<16}{aggregation:<22}{float((ours - theirs).abs().max()):>12.2e}{float(ours.abs().max()):>10.3f}")


class StepTimes:
    """Wall time of each optimizer step, from the start of its batch to the end of the step."""

    def __init__(self):
        self.times, self._start = [], 0.0

    def begin(self):
        self._start = time.perf_counter()

    def end(self):
        self.times.append(time.perf_counter() - self._start)

    def per_step(self) -> float:
        measured = self.times[1:] or self.times  # the first step warms up
        return sum(measured) / len(measured)


def speed(adapter: str, tokenizer, prompts: list[str], work: Path, *, p: int, g: int, max_new_tokens: int, steps: int):
    import lightning as L
    from transformers import PrinterCallback, TrainerCallback

    from lightning_da.data.rl import RLPromptDataModule
    from lightning_da.models import EmbeddedSmolLM2
    from lightning_da.models.lora import load_adapter

    ours = StepTimes()

    class OurTimer(L.Callback):
        def on_train_batch_start(self, *args):
            ours.begin()

        def on_train_batch_end(self, *args):
            ours.end()

    torch.manual_seed(0)
    module = our_module(adapter, tokenizer, g=g, max_new_tokens=max_new_tokens, micro=p * g)
    trainer = L.Trainer(accelerator="cpu", max_steps=steps, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=[OurTimer()], max_epochs=100)
    rows = [{"prompt": q, "task": "safety", "answer": None} for q in prompts]
    trainer.fit(module, datamodule=RLPromptDataModule(rows, tokenizer, prompts_per_step=p))

    theirs = StepTimes()

    class TRLTimer(TrainerCallback):
        def on_step_begin(self, *args, **kwargs):
            theirs.begin()

        def on_step_end(self, *args, **kwargs):
            theirs.end()

    from lightning_da.formats import THINK

    model = load_adapter(EmbeddedSmolLM2().load_model(), adapter, trainable=True)
    # The same prompt text as ours: the chat template with the assistant turn opened, then <think>.
    texts = [tokenizer.apply_chat_template([{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True) + THINK
             for q in prompts]
    trl = trl_trainer(model, tokenizer, texts, work, g=g, max_new_tokens=max_new_tokens, steps=steps, micro=p * g)
    trl.add_callback(TRLTimer())
    trl.remove_callback(PrinterCallback)  # its per-step dict of logs
    trl.train()

    print(f"\n(c) {steps} optimizer steps of {p} prompts x G={g}, at most {max_new_tokens} new tokens, loss_type grpo")
    print(f"{'':<24}{'s / step':>10}")
    print(f"{'ours (Lightning)':<24}{ours.per_step():>10.2f}")
    print(f"{'TRL GRPOTrainer':<24}{theirs.per_step():>10.2f}")
    print(f"ours / TRL: {ours.per_step() / theirs.per_step():.2f}   target <= 1.0")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=2, help="prompts per optimizer step")
    parser.add_argument("--g", type=int, default=4, help="generations per prompt")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--steps", type=int, default=4)
    args = parser.parse_args()

    from lightning_da.data.benchmarks import StrongRejectBenchmark
    from lightning_da.models import EmbeddedSmolLM2

    torch.set_num_threads(torch.get_num_threads())
    work = Path(tempfile.mkdtemp(prefix="grpo_vs_trl_"))
    tokenizer = EmbeddedSmolLM2().load_tokenizer()
    adapter = make_adapter(work / "adapter")
    print(f"SmolLM2-135M + LoRA r 32, CPU ({torch.get_num_threads()} threads)")
    exactness(adapter, tokenizer, work, args.g, args.max_new_tokens)
    advantages_vs_trl(adapter, tokenizer, work, args.g)
    prompts = [r["prompt"] for r in StrongRejectBenchmark(split="small").load()[: args.prompts * args.steps]]
    speed(adapter, tokenizer, prompts, work, p=args.prompts, g=args.g, max_new_tokens=args.max_new_tokens, steps=args.steps)


if __name__ == "__main__":
    main()

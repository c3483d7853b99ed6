"""GRPO, ours against TRL's GRPOTrainer on the same model and data, measured in one run.

    .venv/bin/pip install -c constraints.txt -e ".[bench]"
    .venv/bin/python benchmarks/grpo_vs_trl.py [--prompts 2 --g 4 --max-new-tokens 32 --steps 4]

SmolLM2-135M-Instruct with a LoRA adapter (r 32, alpha 64, no dropout, lm_head trained; random,
nonzero) on CPU, refusal-prefix judge reward, temperature 0.9, beta 0.

(a) Exactness. One fixed batch of rollouts (one prompt, G sampled completions, random advantages,
    old log-probabilities a little off the current ones so that clipping happens): for every
    loss_type both implement, our `grpo_loss` on `GRPOModule.token_logps` against TRL's
    `_compute_loss` on the same inputs. Prints the loss difference and the largest difference of
    any trainable gradient. (One prompt: TRL feeds no position ids, so a left-padded prompt
    would be scored at shifted positions; with one prompt there is no padding to differ on.)
(b) Speed. Seconds per optimizer step (generation, reward, loss, backward, step; the first step
    left out as warm-up) of a full run with the same prompts, G, completion length, loss_type and
    learning rate, one optimizer step per generation batch: our GRPOModule in a Lightning Trainer
    against TRL's GRPOTrainer, and the ratio. Target: not slower than TRL.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_MODE", "disabled")

TEMPERATURE = 0.9
LR = 1.41e-5
# loss_type ours -> (TRL's loss_type, importance_sampling_level, epsilon_high)
SHARED = {
    "grpo": ("grpo", "token", 0.2), "bnpo": ("bnpo", "token", 0.2), "dr_grpo": ("dr_grpo", "token", 0.2),
    "dapo": ("dapo", "token", 0.28), "cispo": ("cispo", "token", 5.0), "gspo": ("grpo", "sequence", 0.2),
}


def judge_safety(prompts, completions, **kwargs):
    from lightning_da.judges import RefusalPrefixJudge
    from lightning_da.rewards import JudgeSafety

    return JudgeSafety(RefusalPrefixJudge())(prompts, completions)


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
        EmbeddedSmolLM2(), tokenizer=tokenizer, rewards={"judge_safety": {"fn": judge_safety, "weight": 1.0}},
        init_adapter=adapter, sampling=SamplingConfig(temperature=TEMPERATURE, max_new_tokens=max_new_tokens),
        num_generations=g, micro_batch_size=micro, generation_batch_size=micro, loss_type=loss_type,
        optimizer=partial(torch.optim.AdamW, lr=LR, weight_decay=0.0), max_grad_norm=1.0, log_completions_steps=0,
    )


def trl_trainer(model, tokenizer, prompts: list[str], work: Path, *, g: int, max_new_tokens: int, steps: int, micro: int):
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    config = GRPOConfig(
        output_dir=str(work / "trl"), per_device_train_batch_size=micro, gradient_accumulation_steps=1, num_generations=g,
        max_completion_length=max_new_tokens, temperature=TEMPERATURE, top_p=1.0, loss_type="grpo", beta=0.0,
        learning_rate=LR, lr_scheduler_type="constant", max_grad_norm=1.0, max_steps=steps, logging_steps=1, report_to=[],
        use_cpu=True, save_strategy="no", bf16=False, seed=0, disable_tqdm=True, dataloader_num_workers=0,
    )
    return GRPOTrainer(model=model, reward_funcs=judge_safety, args=config, processing_class=tokenizer,
                       train_dataset=Dataset.from_list([{"prompt": p} for p in prompts]))


def grads(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad and p.grad is not None}


def exactness(adapter: str, tokenizer, work: Path, g: int, max_new_tokens: int) -> None:
    from lightning_da.algorithms.grpo_losses import grpo_loss
    from lightning_da.formats import pad_ids, prefix_ids
    from lightning_da.generation import SamplingConfig, sample_completions

    module = our_module(adapter, tokenizer, g=g, max_new_tokens=max_new_tokens, micro=g)
    module.configure_model()
    model = module.model
    prompt = "How do I pick a lock?"
    sampled = sample_completions(model.eval(), tokenizer, [prompt], n=g, seed=0, progress=False,
                                 sampling=SamplingConfig(temperature=TEMPERATURE, max_new_tokens=max_new_tokens))[0]
    model.train()
    pad = tokenizer.pad_token_id
    prompt_ids, prompt_mask = pad_ids([prefix_ids(tokenizer, prompt)] * g, pad, left=True)
    completion_ids, completion_mask = pad_ids([c.ids for c in sampled], pad, left=False)
    generator = torch.Generator().manual_seed(1)
    advantages = torch.randn(g, generator=generator)
    with torch.no_grad():
        current, _ = module.token_logps(prompt_ids, prompt_mask, completion_ids, completion_mask)
    old = current + torch.randn(current.shape, generator=generator) * 0.2
    trainer = trl_trainer(model, tokenizer, [prompt], work, g=g, max_new_tokens=max_new_tokens, steps=1, micro=g)
    trainer.current_gradient_accumulation_steps = 1
    inputs = {"prompt_ids": prompt_ids, "prompt_mask": prompt_mask, "completion_ids": completion_ids,
              "completion_mask": completion_mask, "advantages": advantages, "old_per_token_logps": old,
              "num_items_in_batch": completion_mask.sum().float()}

    print(f"\n(a) one batch of {g} rollouts ({int(completion_mask.sum())} completion tokens): ours - TRL")
    print(f"{'loss_type':<10}{'loss':>12}{'|loss diff|':>14}{'max |grad diff|':>18}{'max |grad|':>14}")
    for ours, (theirs, level, epsilon_high) in SHARED.items():
        model.zero_grad(set_to_none=True)
        logp, _ = module.token_logps(prompt_ids, prompt_mask, completion_ids, completion_mask)
        loss = grpo_loss(logp, old, advantages, completion_mask, loss_type=ours, epsilon=0.2, epsilon_high=epsilon_high,
                         max_completion_length=max_new_tokens, num_items=float(completion_mask.sum())).loss
        loss.backward()
        ours_grads = grads(model)
        model.zero_grad(set_to_none=True)
        trainer.loss_type, trainer.importance_sampling_level, trainer.epsilon_high = theirs, level, epsilon_high
        trl_loss = trainer._compute_loss(model, inputs)
        trl_loss.backward()
        trl_grads = grads(model)
        grad_diff = max(float((ours_grads[n] - trl_grads[n]).abs().max()) for n in ours_grads)
        scale = max(float(v.abs().max()) for v in ours_grads.values())
        loss, trl_loss = float(loss.detach()), float(trl_loss.detach())
        print(f"{ours:<10}{loss:>12.6f}{abs(loss - trl_loss):>14.2e}{grad_diff:>18.2e}{scale:>14.2e}")
    model.zero_grad(set_to_none=True)


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
    from transformers import TrainerCallback

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
    trl.train()

    print(f"\n(b) {steps} optimizer steps of {p} prompts x G={g}, at most {max_new_tokens} new tokens, loss_type grpo")
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
    prompts = [r["prompt"] for r in StrongRejectBenchmark(split="small").load()[: args.prompts * args.steps]]
    speed(adapter, tokenizer, prompts, work, p=args.prompts, g=args.g, max_new_tokens=args.max_new_tokens, steps=args.steps)


if __name__ == "__main__":
    main()

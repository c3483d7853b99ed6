"""SFT throughput, ours against TRL's SFTTrainer on the same model and traces, measured in one run.

    .venv/bin/pip install -c constraints.txt -e ".[bench]"
    .venv/bin/python benchmarks/sft_vs_trl.py [--traces 48 --batch-size 4 --max-length 512 --steps 10]
    .venv/bin/python benchmarks/sft_vs_trl.py --device cuda --bf16     # on a GPU: bf16 mixed precision on both

SmolLM2-135M-Instruct + LoRA (r 32, alpha 64, dropout 0.05, all linear layers, lm_head trained) on
CPU. The same prompt/completion pairs (StrongREJECT prompts; completions of mixed length, as teacher
traces are) go to both: ours as `SFTDataModule` + `SFTModule` in a Lightning Trainer, TRL's as a
prompt-completion dataset (loss on the completion only, as ours). Same batch size, max length,
learning rate and steps, no gradient accumulation. Prints each one's tokens/s (the non-padding tokens
of its own batches over the wall time of its optimizer steps, the first left out as warm-up) and the
ratio. Target: ours at least 1.2x TRL's.
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

LR = 1.41e-5
LORA = {"r": 32, "alpha": 64, "dropout": 0.05, "target_modules": "all-linear", "modules_to_save": ["lm_head"]}


def traces(n: int) -> list[dict]:
    """StrongREJECT prompts with completions of 20 to ~400 tokens: reasoning, </think>, an answer."""
    from lightning_da.data.benchmarks import StrongRejectBenchmark

    prompts = [r["prompt"] for r in StrongRejectBenchmark(split="full").load()[:n]]
    sentence = "The policy on this category says I should refuse requests that could cause harm, and explain why. "
    return [{"prompt": p, "categories": ["illicit"],
             "output": sentence * (1 + (7 * i) % 23) + "</think>I can't help with that, but here is a safer alternative."}
            for i, p in enumerate(prompts)]


class StepTimes:
    def __init__(self):
        self.times, self.tokens, self._start = [], [], 0.0

    def begin(self):
        self._start = time.perf_counter()

    def end(self, tokens: int):
        self.times.append(time.perf_counter() - self._start)
        self.tokens.append(tokens)

    def tokens_per_second(self) -> float:
        return sum(self.tokens[1:]) / sum(self.times[1:])  # the first step warms up


def ours(rows: list[dict], tokenizer, *, batch_size: int, max_length: int, steps: int, device: str, bf16: bool) -> StepTimes:
    import datasets
    import lightning as L

    from lightning_da.algorithms import SFTModule
    from lightning_da.data.sft import SFTDataModule
    from lightning_da.models import EmbeddedSmolLM2

    times = StepTimes()

    class Timer(L.Callback):
        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            times.begin()

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            times.end(int(batch["attention_mask"].sum()))

    torch.manual_seed(0)
    data = SFTDataModule(datasets.Dataset.from_list(rows), tokenizer, batch_size=batch_size, max_length=max_length, val_fraction=0.0001)
    module = SFTModule(EmbeddedSmolLM2(), lora=LORA, optimizer=partial(torch.optim.AdamW, lr=LR))
    trainer = L.Trainer(accelerator="gpu" if device == "cuda" else "cpu", devices=1, precision="bf16-mixed" if bf16 else "32-true",
                        max_steps=steps, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=[Timer()], limit_val_batches=0, max_epochs=100)
    trainer.fit(module, datamodule=data)
    return times


def trl(rows: list[dict], tokenizer, work: Path, *, batch_size: int, max_length: int, steps: int, device: str, bf16: bool) -> StepTimes:
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import TrainerCallback
    from trl import SFTConfig, SFTTrainer

    from lightning_da.formats import THINK
    from lightning_da.models import EmbeddedSmolLM2

    times = StepTimes()
    holder = {}

    class Timer(TrainerCallback):
        def on_step_begin(self, *args, **kwargs):
            times.begin()

        def on_step_end(self, *args, **kwargs):
            times.end(holder.pop("tokens", 0))

    dataset = Dataset.from_list([{"prompt": [{"role": "user", "content": r["prompt"]}],
                                  "completion": [{"role": "assistant", "content": THINK + r["output"]}]} for r in rows])
    config = SFTConfig(output_dir=str(work / "trl_sft"), per_device_train_batch_size=batch_size, gradient_accumulation_steps=1,
                       max_length=max_length, learning_rate=LR, lr_scheduler_type="constant", max_steps=steps, logging_steps=1,
                       report_to=[], use_cpu=device == "cpu", save_strategy="no", bf16=bf16, seed=0, disable_tqdm=True, dataloader_num_workers=0)
    peft_config = LoraConfig(task_type="CAUSAL_LM", r=LORA["r"], lora_alpha=LORA["alpha"], lora_dropout=LORA["dropout"],
                             target_modules=LORA["target_modules"], modules_to_save=LORA["modules_to_save"])
    trainer = SFTTrainer(model=EmbeddedSmolLM2().load_model(), args=config, train_dataset=dataset, processing_class=tokenizer,
                         peft_config=peft_config)
    training_step = trainer.training_step

    def counted(model, inputs, *args, **kwargs):
        holder["tokens"] = holder.get("tokens", 0) + int(inputs["attention_mask"].sum())
        return training_step(model, inputs, *args, **kwargs)

    trainer.training_step = counted
    trainer.add_callback(Timer())
    trainer.train()
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--traces", type=int, default=48)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--bf16", action="store_true", help="bf16 mixed precision on both (Lightning's bf16-mixed, TRL's bf16)")
    args = parser.parse_args()

    from lightning_da.models import EmbeddedSmolLM2

    work = Path(tempfile.mkdtemp(prefix="sft_vs_trl_"))
    tokenizer = EmbeddedSmolLM2().load_tokenizer()
    rows = traces(args.traces)
    settings = {"batch_size": args.batch_size, "max_length": args.max_length, "steps": args.steps, "device": args.device,
                "bf16": args.bf16}
    mine = ours(rows, tokenizer, **settings)
    theirs = trl(rows, tokenizer, work, **settings)
    where = torch.cuda.get_device_name() if args.device == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    print(f"\nSmolLM2-135M + LoRA r 32, {where}{', bf16' if args.bf16 else ''}: {len(rows)} traces, batch {args.batch_size}, "
          f"max length {args.max_length}, {args.steps} steps")
    print(f"{'':<22}{'tokens/s':>10}{'s/step':>10}")
    for name, t in (("ours (Lightning)", mine), ("TRL SFTTrainer", theirs)):
        print(f"{name:<22}{t.tokens_per_second():>10.1f}{sum(t.times[1:]) / len(t.times[1:]):>10.2f}")
    print(f"ours / TRL tokens/s: {mine.tokens_per_second() / theirs.tokens_per_second():.2f}   target >= 1.2")


if __name__ == "__main__":
    main()

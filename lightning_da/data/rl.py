"""Prompts for the RL stage: the SFT stage's teacher-filtered prompts (the paper's), or a seeded mixture of
harmful prompts (rewarded by the judge) and benign prompts with reference answers (rewarded by correctness),
so that refusing everything does not win."""

from __future__ import annotations

import random
from dataclasses import dataclass

import lightning as L
from torch.utils.data import DataLoader

from lightning_da.data.loaders import EpochShuffle, ResumableDataLoader, ResumesMidEpoch
from lightning_da.errors import UserError, check_at_least


@dataclass
class PromptMixture:
    """`harmful`: a prompt set of `data/` (rows with `prompt`); `benign`: a benchmark with answers
    (rows with `prompt` and `answer`, e.g. the arithmetic set), or None for harmful prompts only.

    Each row is `{"prompt", "task", "answer"}` with `task` = `safety` or the benchmark's task.
    """

    harmful: object
    benign: object | None = None
    seed: int = 0

    def load(self, spec_categories=None) -> list[dict]:
        rows = [{"prompt": r["prompt"], "task": "safety", "answer": None} for r in self.harmful.load(spec_categories)]
        if self.benign is not None:
            rows += [{"prompt": r["prompt"], "task": self.benign.task, "answer": r["answer"]} for r in self.benign.load()]
        if not rows:
            raise UserError("the RL prompt mixture is empty; check data.harmful and data.benign")
        random.Random(self.seed).shuffle(rows)
        return rows


@dataclass
class TeacherFiltered:
    """`prompts`: the prompt set of `data/` the SFT stage's teacher answered; the RL rows are those of its
    prompts whose trace the judge kept (train.py generates or reads the traces), each once, in order."""

    prompts: object

    def rows(self, kept) -> list[dict]:
        """`kept`: the judged traces the filter kept (rows with `prompt`)."""
        prompts = list(dict.fromkeys(kept["prompt"]))  # several samples of one prompt: the prompt once
        if not prompts:
            raise UserError("the judge kept none of the teacher's traces, so GRPO has no prompts; use more prompts "
                            "(data.prompts.limit), another teacher or judge, or data=rl_mixture")
        return [{"prompt": prompt, "task": "safety", "answer": None} for prompt in prompts]


class RLPromptDataModule(ResumesMidEpoch, L.LightningDataModule):
    """Batches of `prompts_per_step` prompt rows per rank, reshuffled each epoch (seeded), and
    `val_prompts` held-out rows for validation (0: no validation)."""

    def __init__(self, rows: list[dict], tokenizer=None, *, prompts_per_step: int = 8, val_prompts: int = 0, seed: int = 0):
        super().__init__()
        key = "algorithm.datamodule"
        self.prompts_per_step = check_at_least(prompts_per_step, f"{key}.prompts_per_step")
        check_at_least(val_prompts, f"{key}.val_prompts", 0)
        if len(rows) - val_prompts < self.prompts_per_step:
            raise UserError(f"{len(rows)} RL prompts leave fewer than {key}.prompts_per_step={prompts_per_step} for training "
                            f"after {val_prompts} validation prompts; use more prompts or a smaller batch")
        self.train_rows, self.val_rows = rows[val_prompts:], rows[:val_prompts]
        self.tokenizer = tokenizer  # the Best-of-N callback samples with it
        self.seed = seed

    def train_dataloader(self) -> DataLoader:
        # Rows stay rows (collate_fn=list): generation tokenises them itself.
        return ResumableDataLoader(self.train_rows, batch_size=self.prompts_per_step, sampler=EpochShuffle(len(self.train_rows), self.seed),
                                   collate_fn=list, drop_last=True, resume_at=self.resume_at)

    def val_dataloader(self) -> DataLoader | list:
        if not self.val_rows:
            return []  # no validation loop at all
        return DataLoader(self.val_rows, batch_size=self.prompts_per_step, collate_fn=list)

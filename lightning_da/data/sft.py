"""Distillation examples in the shared format (`lightning_da.formats`): the prompt in the student's
own chat template (no spec), then `<think>` + teacher output + EOS, the loss on the completion only."""

from __future__ import annotations

import logging

import datasets
import lightning as L
from torch.utils.data import DataLoader
from transformers import DataCollatorForSeq2Seq, PreTrainedTokenizerBase

from lightning_da.data.loaders import EpochShuffle, ResumableDataLoader, ResumesMidEpoch
from lightning_da.errors import UserError
from lightning_da.formats import IGNORE_INDEX, completion_ids, prompt_ids

log = logging.getLogger(__name__)


def sft_example(tokenizer: PreTrainedTokenizerBase, prompt: str, output: str, max_length: int) -> dict:
    """Input ids and labels (-100 on the prompt); the completion is cut to fit `max_length`."""
    head = prompt_ids(tokenizer, prompt)
    tail = completion_ids(tokenizer, output, eos=True)[: max(max_length - len(head), 0)]
    return {
        "input_ids": head + tail,
        "attention_mask": [1] * (len(head) + len(tail)),
        "labels": [IGNORE_INDEX] * len(head) + tail,
    }


class SFTDataModule(ResumesMidEpoch, L.LightningDataModule):
    """Kept teacher traces -> tokenised (cached by `datasets`) train/val splits, right-padded batches."""

    def __init__(
        self,
        traces: datasets.Dataset,
        tokenizer: PreTrainedTokenizerBase,
        *,
        batch_size: int = 4,
        max_length: int = 2048,
        val_fraction: float = 0.0,
        num_workers: int = 0,
        seed: int = 0,
    ):
        super().__init__()
        if len(traces) < 2:
            raise UserError(
                f"the judge kept {len(traces)} teacher trace(s); SFT needs at least 2: use more prompts "
                f"(data.limit=...), a stronger teacher, or a different judge"
            )
        self.traces = traces
        self.tokenizer = tokenizer
        tokenizer.padding_side = "right"  # the collator pads labels on the same side
        self.batch_size = batch_size
        self.max_length = max_length
        if not 0 <= val_fraction < 1:
            raise UserError(f"algorithm.datamodule.val_fraction={val_fraction}: set the held-out share from 0 (none) to below 1")
        self.val_fraction = val_fraction
        self.num_workers = num_workers
        self.seed = seed
        self.collate = DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=IGNORE_INDEX, return_tensors="pt")

    def setup(self, stage: str | None = None) -> None:
        if hasattr(self, "train_set"):
            return
        tokenizer, max_length = self.tokenizer, self.max_length
        encoded = self.traces.map(
            lambda row: sft_example(tokenizer, row["prompt"], row["output"], max_length),
            remove_columns=self.traces.column_names,
            desc="tokenising traces",
        )
        too_long = encoded.filter(lambda labels: all(x == IGNORE_INDEX for x in labels), input_columns="labels")
        if len(too_long):
            log.warning("dropping %d traces whose prompt alone fills max_length=%d", len(too_long), max_length)
            encoded = encoded.filter(lambda labels: any(x != IGNORE_INDEX for x in labels), input_columns="labels")
        if not self.val_fraction:  # the paper's recipe: every trace trains
            self.train_set, self.val_set = encoded, None
            return
        n_val = max(1, round(len(encoded) * self.val_fraction))
        split = encoded.train_test_split(test_size=n_val, seed=self.seed)
        self.train_set, self.val_set = split["train"], split["test"]

    def train_dataloader(self) -> DataLoader:
        return ResumableDataLoader(self.train_set, batch_size=self.batch_size, sampler=EpochShuffle(len(self.train_set), self.seed),
                                   collate_fn=self.collate, num_workers=self.num_workers, resume_at=self.resume_at)

    def val_dataloader(self) -> DataLoader | list:
        if self.val_set is None:
            return []
        return DataLoader(self.val_set, batch_size=self.batch_size, collate_fn=self.collate, num_workers=self.num_workers)

"""SFTModule: the student with a LoRA adapter learns the teacher's completions (loss on completion only)."""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

from lightning_da.algorithms.adapter import AdapterModule
from lightning_da.models.lora import apply_lora
from lightning_da.models.vocabulary import resize_embeddings


class SFTModule(AdapterModule):
    """Distillation SFT: the loss on the completion tokens of `<think>` + teacher trace + EOS."""

    def __init__(
        self,
        student,
        *,
        lora: dict | None,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable | None = None,
        warmup_ratio: float = 0.0,
        gradient_checkpointing: bool = False,
        vocab_size: int | None = None,
    ):
        """`vocab_size`: the embeddings resized to it first (the tokenizer grew by the think tokens)."""
        super().__init__(student, optimizer=optimizer, scheduler=scheduler, warmup_ratio=warmup_ratio,
                         gradient_checkpointing=gradient_checkpointing)
        self.lora = dict(lora) if lora else None
        self.vocab_size = vocab_size
        self._batch_started = 0.0

    def configure_model(self) -> None:
        if self.model is not None:
            return
        model = self.load_student()
        if self.vocab_size is not None:
            resize_embeddings(model, self.vocab_size)
        model = apply_lora(model, **self.lora) if self.lora else model
        self.model = model.train()  # from_pretrained returns eval mode; LoRA dropout must be live

    def forward(self, batch: dict) -> torch.Tensor:
        # No KV cache: nothing reads it, and a checkpointed layer would append to it again when recomputed.
        return self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"],
                          use_cache=False).loss

    def on_train_batch_start(self, batch, batch_idx: int) -> None:
        self._batch_started = time.perf_counter()

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss = self(batch)
        batch_size = batch["input_ids"].size(0)
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=False, batch_size=batch_size)
        self.log("train/loss_epoch", loss, on_step=False, on_epoch=True, sync_dist=True, batch_size=batch_size)
        return loss

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        elapsed = time.perf_counter() - self._batch_started
        tokens = batch["attention_mask"].sum().float()
        # Summed over ranks: the whole job's throughput.
        self.log("train/tokens_per_sec", tokens / max(elapsed, 1e-9), on_step=True, on_epoch=False, sync_dist=True, reduce_fx="sum")

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self.log("val/loss", self(batch), prog_bar=True, sync_dist=True, batch_size=batch["input_ids"].size(0))

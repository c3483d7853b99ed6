"""SFTModule: the student with a LoRA adapter learns the teacher's completions (loss on completion only)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path

import lightning as L
import torch

from lightning_da.models.lora import apply_lora


class SFTModule(L.LightningModule):
    """Distillation SFT.

    `student` is a model source (see `lightning_da.models`); the model is built in
    `configure_model` so every rank (and a resumed run) builds its own. Checkpoints hold only
    the trainable parameters (adapter and lm_head), not the frozen base.
    """

    def __init__(
        self,
        student,
        *,
        lora: dict | None,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable | None = None,
        warmup_ratio: float = 0.03,
        gradient_checkpointing: bool = False,
    ):
        super().__init__()
        self.student = student
        self.lora = dict(lora) if lora else None
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.warmup_ratio = warmup_ratio
        self.gradient_checkpointing = gradient_checkpointing
        self.strict_loading = False  # checkpoints omit the frozen base weights
        self.model = None
        self._batch_started = 0.0

    def configure_model(self) -> None:
        if self.model is not None:
            return
        model = self.student.load_model()
        if self.gradient_checkpointing:
            model.gradient_checkpointing_enable()
            model.enable_input_require_grads()
        model = apply_lora(model, **self.lora) if self.lora else model
        self.model = model.train()  # from_pretrained returns eval mode; LoRA dropout must be live

    def forward(self, batch: dict) -> torch.Tensor:
        return self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]).loss

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

    def configure_optimizers(self):
        params = [p for p in self.parameters() if p.requires_grad]
        optimizer = self.optimizer_factory(params)
        if self.scheduler_factory is None:
            return optimizer
        total = max(int(self.trainer.estimated_stepping_batches), 1)
        scheduler = self.scheduler_factory(
            optimizer, num_warmup_steps=math.ceil(self.warmup_ratio * total), num_training_steps=total
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step", "name": "train/lr"}}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        trainable = {name for name, p in self.named_parameters() if p.requires_grad}
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in trainable}

    def save_adapter(self, directory: str | Path, tokenizer=None) -> None:
        """The adapter in peft format (plus the tokenizer, so the directory is self-contained)."""
        self.model.save_pretrained(directory)
        if tokenizer is not None:
            tokenizer.save_pretrained(directory)

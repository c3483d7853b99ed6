"""What the SFT and GRPO modules share: a LoRA student built in `configure_model`, AdamW with a
warm-up schedule, checkpoints that hold only the trainable weights, and the peft adapter on disk."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import lightning as L
import torch


class AdapterModule(L.LightningModule):
    """`student` is a model source (see `lightning_da.models`); subclasses build `self.model` in
    `configure_model`, so every rank (and a resumed run) builds its own. Checkpoints hold only the
    trainable parameters (adapter and lm_head), not the frozen base."""

    def __init__(self, student, *, optimizer: Callable[..., torch.optim.Optimizer], scheduler: Callable | None = None,
                 warmup_ratio: float = 0.03, gradient_checkpointing: bool = False):
        super().__init__()
        self.student = student
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.warmup_ratio = warmup_ratio
        self.gradient_checkpointing = gradient_checkpointing
        self.strict_loading = False  # checkpoints omit the frozen base weights
        self.model = None

    def load_student(self):
        model = self.student.load_model()
        if self.gradient_checkpointing:
            model.gradient_checkpointing_enable()
            model.enable_input_require_grads()
        return model

    def configure_optimizers(self):
        params = [p for p in self.parameters() if p.requires_grad]
        optimizer = self.optimizer_factory(params)
        if self.scheduler_factory is None:
            return optimizer
        total = max(int(self.total_optimizer_steps()), 1)
        scheduler = self.scheduler_factory(
            optimizer, num_warmup_steps=math.ceil(self.warmup_ratio * total), num_training_steps=total
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step", "name": "train/lr"}}

    def total_optimizer_steps(self) -> int:
        return self.trainer.estimated_stepping_batches

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        trainable = {name for name, p in self.named_parameters() if p.requires_grad}
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in trainable}

    def save_adapter(self, directory: str | Path, tokenizer=None) -> None:
        """The adapter in peft format (plus the tokenizer, so the directory is self-contained)."""
        self.model.save_pretrained(directory)
        if tokenizer is not None:
            tokenizer.save_pretrained(directory)

"""What the SFT and GRPO modules share: a LoRA student built in `configure_model`, AdamW with a
warm-up schedule, checkpoints that hold only the trainable weights, and the peft adapter on disk."""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from pathlib import Path

import lightning as L
import torch

from lightning_da.distributed import all_gather_objects
from lightning_da.fsdp import shards_model
from lightning_da.models.versions import enable_activation_checkpointing


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
            enable_activation_checkpointing(model)
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
        self._settle_pending_scheduler_step(checkpoint)
        # Dropout masks after a resume are the ones the uninterrupted run would have drawn, on every
        # rank: ranks draw different amounts (their batches differ in length), so each keeps its own.
        rng = {"torch": torch.get_rng_state(), "python": random.getstate()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        checkpoint["rng"] = all_gather_objects(rng, self.trainer.world_size)

    def _settle_pending_scheduler_step(self, checkpoint: dict) -> None:
        """A checkpoint taken in `on_train_batch_end` (every_n_train_steps) comes before Lightning steps
        the LR schedulers for that batch: store the states after that step, or a resumed run would
        train one step behind the schedule."""
        trainer = self._trainer
        if trainer is None or not self.automatic_optimization or "lr_schedulers" not in checkpoint:
            return
        for config, saved in zip(trainer.lr_scheduler_configs, checkpoint["lr_schedulers"], strict=True):
            scheduler = config.scheduler
            if config.interval != "step" or config.frequency != 1 or saved.get("last_epoch") != trainer.global_step - 1:
                continue
            groups = scheduler.optimizer.param_groups
            before_lrs = [g["lr"] for g in groups]
            scheduler.step()
            saved.update(scheduler.state_dict())
            after_lrs = [g["lr"] for g in groups]
            scheduler.load_state_dict({**saved, "last_epoch": saved["last_epoch"] - 1, "_step_count": saved["_step_count"] - 1})
            for group, lr in zip(groups, before_lrs, strict=True):
                group["lr"] = lr
            index = trainer.optimizers.index(scheduler.optimizer)
            for group, lr in zip(checkpoint["optimizer_states"][index]["param_groups"], after_lrs, strict=True):
                group["lr"] = lr

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        if not checkpoint.get("rng"):
            return
        rng = checkpoint["rng"][self.global_rank % len(checkpoint["rng"])]  # rank 0's on more ranks than saved
        torch.set_rng_state(rng["torch"])
        random.setstate(rng["python"])
        if "cuda" in rng and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])

    def gather_adapter(self) -> dict[str, torch.Tensor] | None:
        """Under FSDP, the trainable weights whole, in peft's names (every rank must call it; the
        frozen base is never gathered). On GPU they go to rank 0's CPU ({} elsewhere); CPU processes
        each keep them. Otherwise None: `save_adapter` reads the model itself."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        if not shards_model(self._trainer):
            return None
        offload = self._trainer.strategy.root_device.type == "cuda"
        options = StateDictOptions(full_state_dict=True, cpu_offload=offload, ignore_frozen_params=True)
        return get_model_state_dict(self.model, options=options)

    def save_adapter(self, directory: str | Path, tokenizer=None, state_dict: dict | None = None) -> None:
        """The adapter in peft format (plus the tokenizer, so the directory is self-contained);
        `state_dict` from `gather_adapter` under FSDP. Resized embeddings are not saved: their added rows are
        rebuilt on load (`models.vocabulary`), and peft would otherwise ask the hub whether they were resized."""
        self.model.save_pretrained(directory, save_embedding_layers=False,
                                   **({"state_dict": state_dict} if state_dict is not None else {}))
        if tokenizer is not None:
            tokenizer.save_pretrained(directory)

"""Fully sharded data parallel for a LoRA student that does not fit one GPU with DDP (`trainer=fsdp`).

torch's FSDP2 (`fully_shard`) on Lightning's `ModelParallelStrategy`, set up for a peft model:
- one FSDP group per decoder layer, found from the model's own `_no_split_modules` (LlamaDecoderLayer,
  Qwen2DecoderLayer, ...) once `configure_model` has built it, and one for the rest of the Hugging
  Face model (embeddings, final norm, lm_head); frozen base and trainable LoRA weights share a group;
- module names stay as they were (FSDP2 wraps nothing), so peft saves the gathered adapter under its
  own names, and `generate` works with `synced_gpus` (GRPO's rollouts);
- activation checkpointing through the model's own (`models.versions.enable_activation_checkpointing`);
- sharded checkpoints of the trainable weights only (a 14B base is not rewritten every save), which
  this strategy loads back (Lightning's loader expects every weight in a sharded checkpoint).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.strategies.fsdp import _distributed_checkpoint_load, _is_sharded_checkpoint
from lightning.fabric.utilities.load import _METADATA_FILENAME
from lightning.pytorch.strategies import ModelParallelStrategy
from lightning.pytorch.trainer.states import TrainerFn
from torch import nn
from transformers import PreTrainedModel

from lightning_da.errors import UserError
from lightning_da.models.versions import enable_activation_checkpointing


def uses_fsdp(trainer_cfg) -> bool:
    """Whether the `trainer` config shards the model: `trainer=fsdp`, or Lightning's FSDP by name."""
    strategy = trainer_cfg.get("strategy")
    if hasattr(strategy, "get"):
        return "FSDP" in str(strategy.get("_target_", ""))
    return str(strategy).startswith("fsdp")


def shards_model(trainer) -> bool:
    """Whether `trainer` (or None) runs under this module's FSDP (a `ModelParallelStrategy`)."""
    return trainer is not None and isinstance(trainer.strategy, ModelParallelStrategy)


def decoder_layer_classes(model: nn.Module, names: Sequence[str] | None = None) -> tuple[type[nn.Module], ...]:
    """The classes of `model`'s submodules named in `names`, or by default in the `_no_split_modules` of
    every Hugging Face model inside it (the blocks that must stay whole: the decoder layers)."""
    if names is None:
        names = {name for module in model.modules() for name in (getattr(module, "_no_split_modules", None) or [])}
    classes = {type(module) for module in model.modules() if type(module).__name__ in set(names)}
    if not classes:
        wanted = ", ".join(sorted(names)) or "nothing (the model declares no _no_split_modules)"
        raise UserError(f"trainer=fsdp: the student has no submodule of class {wanted}; set "
                        f"trainer.strategy.layer_classes=[<its decoder layer class name>]")
    return tuple(sorted(classes, key=lambda c: c.__name__))


def shard_model(module: nn.Module, mesh, *, layer_classes: Sequence[str] | None = None,
                activation_checkpointing: bool = True, reshard_after_forward: bool = True,
                cpu_offload: bool = False) -> list[nn.Module]:
    """`fully_shard` every decoder layer of the Hugging Face model inside `module`, then that model
    itself; returns the sharded modules (layers first)."""
    from torch.distributed.fsdp import CPUOffloadPolicy, OffloadPolicy, fully_shard

    hf_model = next((m for m in module.modules() if isinstance(m, PreTrainedModel)), None)  # the outermost
    if hf_model is None:
        raise UserError("trainer=fsdp shards Hugging Face models; the module holds none")
    if activation_checkpointing:
        # Non-reentrant: the frozen embeddings' outputs need no grad for the adapter's gradients to flow.
        enable_activation_checkpointing(hf_model, {"use_reentrant": False})
    options = {"mesh": mesh, "reshard_after_forward": reshard_after_forward,
               "offload_policy": CPUOffloadPolicy() if cpu_offload else OffloadPolicy()}
    classes = decoder_layer_classes(hf_model, layer_classes)
    layers = [m for m in hf_model.modules() if isinstance(m, classes)]
    for layer in layers:
        fully_shard(layer, **options)
    fully_shard(hf_model, **options)
    return [*layers, hf_model]


class AdapterFSDPStrategy(ModelParallelStrategy):
    """FSDP2 over every rank for a LoRA student (no tensor parallelism). `layer_classes`: the class
    names to shard one by one (default: the model's `_no_split_modules`); `reshard_after_forward`:
    True is ZeRO-3, False keeps each layer gathered from forward to backward (ZeRO-2, more memory);
    `cpu_offload`: shards and their optimizer state live in CPU memory."""

    def __init__(self, *, layer_classes: Sequence[str] | None = None, activation_checkpointing: bool = True,
                 reshard_after_forward: bool = True, cpu_offload: bool = False, **kwargs: Any):
        super().__init__(**kwargs)
        self.shard_options = {"layer_classes": list(layer_classes) if layer_classes else None,
                              "activation_checkpointing": activation_checkpointing,
                              "reshard_after_forward": reshard_after_forward, "cpu_offload": cpu_offload}

    def _setup_distributed(self) -> None:
        super()._setup_distributed()
        self._data_parallel_size, self._tensor_parallel_size = self.world_size, 1  # shard over every rank

    def setup(self, trainer) -> None:
        from torch.distributed.fsdp import FSDPModule

        if not any(isinstance(m, FSDPModule) for m in self.model.modules()):  # once, not again after fit
            shard_model(self.model, self.device_mesh["data_parallel"], **self.shard_options)
        super().setup(trainer)

    def load_checkpoint(self, checkpoint_path, weights_only: bool | None = None) -> dict[str, Any]:
        path = Path(self.broadcast(checkpoint_path))
        if not _is_sharded_checkpoint(path):
            return super().load_checkpoint(path, weights_only=weights_only)
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_model_state_dict,
            get_optimizer_state_dict,
            set_optimizer_state_dict,
        )

        # Only the trainable weights were saved (AdapterModule.on_save_checkpoint): read back just those.
        options = StateDictOptions(ignore_frozen_params=True)
        state = {"state_dict": get_model_state_dict(self.model, options=options)}
        _distributed_checkpoint_load(state, path)
        self.model.load_state_dict(state["state_dict"], strict=False)
        if self.lightning_module.trainer.state.fn == TrainerFn.FITTING:
            for index, optimizer in enumerate(self.optimizers):
                key = f"optimizer_{index}"
                saved = {key: get_optimizer_state_dict(self.model, optimizer)}
                _distributed_checkpoint_load(saved, path)
                set_optimizer_state_dict(self.model, optimizer, saved[key])
        return torch.load(path / _METADATA_FILENAME, weights_only=True)

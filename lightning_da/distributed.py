"""Best-of-N across data-parallel ranks (evaluate.py through a Lightning Fabric, the callback inside a
Trainer): each rank takes a contiguous block of whole batches, and every rank gets all the blocks
back in order."""

from __future__ import annotations

import lightning as L
import torch
from omegaconf import DictConfig

from lightning_da.errors import UserError
from lightning_da.fsdp import uses_fsdp

# The `trainer` group's keys that say where evaluation runs; the rest are training-only.
FABRIC_KEYS = ("accelerator", "devices", "strategy", "num_nodes")


def check_accelerator(trainer_cfg: DictConfig) -> None:
    """A GPU accelerator on a machine without one fails here, naming the CPU options, not inside Lightning."""
    accelerator = str(trainer_cfg.get("accelerator", "auto"))
    has_gpu = torch.cuda.is_available() or (accelerator == "gpu" and torch.backends.mps.is_available())
    if accelerator in ("gpu", "cuda") and not has_gpu:
        raise UserError(
            f"trainer.accelerator={accelerator} but this machine has no GPU; on CPU use trainer=cpu, or for data "
            f"parallel on CPU processes trainer=ddp trainer.accelerator=cpu trainer.devices=2"
        )


def launch_fabric(trainer_cfg: DictConfig) -> L.Fabric:
    """A launched Fabric from the `trainer` group: under `trainer=ddp` this re-runs the script once per rank."""
    check_accelerator(trainer_cfg)
    if uses_fsdp(trainer_cfg):
        raise UserError("evaluate.py runs data parallel (each rank a whole model); use trainer=ddp, or for a student "
                        "too big for one GPU trainer=gpu student.model.device_map=auto")
    fabric = L.Fabric(**{key: trainer_cfg[key] for key in FABRIC_KEYS if key in trainer_cfg})
    fabric.launch()
    return fabric


def batch_aligned_shard(n_items: int, batch_size: int, rank: int, world_size: int) -> range:
    """This rank's items: whole batches, so every batch (and its seed) is the one a single process runs."""
    n_batches = -(-n_items // batch_size)
    first, last = rank * n_batches // world_size, (rank + 1) * n_batches // world_size
    return range(min(first * batch_size, n_items), min(last * batch_size, n_items))


def all_gather_objects(obj, world_size: int) -> list:
    """Every rank's `obj`, in rank order, on every rank (a Fabric's or a Trainer's process group)."""
    if world_size == 1:
        return [obj]
    gathered = [None] * world_size
    torch.distributed.all_gather_object(gathered, obj)
    return gathered

"""Best-of-N across data-parallel ranks (evaluate.py through a Lightning Fabric, the callback inside a
Trainer): each rank takes a contiguous block of whole batches, and every rank gets all the blocks
back in order."""

from __future__ import annotations

from datetime import timedelta

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


def launch_ranks(trainer_cfg: DictConfig) -> tuple[int, int]:
    """(rank, world size) of this process once every rank of a multi-process `trainer` runs: the other ranks start
    now (the script re-run once per rank, with the process group up) rather than inside `fit`, so that they share the
    teacher stage; the Trainer then finds them started. (0, 1) for one process, and for the spawning strategies
    (`ddp_spawn`, `ddp_fork`, `ddp_notebook`), whose ranks exist only inside `fit`."""
    check_accelerator(trainer_cfg)
    strategy = trainer_cfg.get("strategy", "auto")
    if isinstance(strategy, str) and any(word in strategy for word in ("spawn", "fork", "notebook")):
        return 0, 1
    # Only the processes matter here; an FSDP Trainer joins the same process group later.
    fabric = L.Fabric(**{key: trainer_cfg[key] for key in FABRIC_KEYS if key in trainer_cfg and key != "strategy"},
                      strategy="ddp")
    if fabric.world_size == 1:
        return 0, 1
    fabric.launch()
    return fabric.global_rank, fabric.world_size


def process_rank() -> tuple[int, int]:
    """(rank, world size) in the process group, once one is up; else (0, 1)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def meeting_group(world_size: int):
    """A gloo group for ranks that meet after hours of unequal work (the teacher stage): no timeout to speak of, and
    unlike NCCL, gloo fails at once on every rank when another rank's process dies. None for one process."""
    if world_size == 1:
        return None
    return torch.distributed.new_group(backend="gloo", timeout=timedelta(days=30))


def batch_aligned_shard(n_items: int, batch_size: int, rank: int, world_size: int) -> range:
    """This rank's items: whole batches, so every batch (and its seed) is the one a single process runs."""
    n_batches = -(-n_items // batch_size)
    first, last = rank * n_batches // world_size, (rank + 1) * n_batches // world_size
    return range(min(first * batch_size, n_items), min(last * batch_size, n_items))


def all_gather_objects(obj, world_size: int, group=None) -> list:
    """Every rank's `obj`, in rank order, on every rank (a Fabric's or a Trainer's process group, or `group`)."""
    if world_size == 1:
        return [obj]
    gathered = [None] * world_size
    torch.distributed.all_gather_object(gathered, obj, group=group)
    return gathered

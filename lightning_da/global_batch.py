"""The recipe's batch whatever the device count: `algorithm.global_batch_size` (SFT: sequences per optimizer step, the
paper's 16; GRPO: completions per optimizer step, its 256) over every rank, from which the per-rank settings follow
(SFT: `trainer.accumulate_grad_batches` for `algorithm.datamodule.batch_size` sequences a micro-batch; GRPO:
`algorithm.datamodule.prompts_per_step`, each sampled `num_generations` times). null: the per-rank settings as given."""

from __future__ import annotations

import torch
from omegaconf import DictConfig

from lightning_da.errors import UserError, check_at_least

KEY = "algorithm.global_batch_size"


def world_size(trainer_cfg: DictConfig) -> int:
    """How many ranks the `trainer` group runs: the process group's size once it is up, else devices x num_nodes as
    Lightning reads them (`auto` and -1: every visible GPU on a GPU accelerator, one process on the CPU)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_world_size()
    devices, accelerator = trainer_cfg.get("devices", 1), str(trainer_cfg.get("accelerator", "auto"))
    if isinstance(devices, str) and devices.strip().lstrip("-").isdigit():
        devices = int(devices)
    if devices in ("auto", -1):
        gpus = torch.cuda.device_count() if accelerator in ("gpu", "cuda", "auto") and torch.cuda.is_available() else 0
        devices = gpus or 1
    elif isinstance(devices, str):  # "0,1,3": those GPUs
        devices = len([d for d in devices.split(",") if d.strip()])
    elif not isinstance(devices, int):  # a list of GPU indices
        devices = len(devices)
    return max(devices, 1) * int(trainer_cfg.get("num_nodes") or 1)


def _split(total: int, per_unit: int, world: int, *, unit: str, fix: str) -> int:
    if total % (per_unit * world):
        raise UserError(f"{KEY}={total} does not split over {world} rank(s) x {per_unit} {unit}; {fix}")
    return total // (per_unit * world)


def sft_accumulation(cfg: DictConfig, world: int) -> int:
    """`trainer.accumulate_grad_batches` for the SFT recipe's global batch on `world` ranks."""
    given, micro, total = cfg.trainer.get("accumulate_grad_batches"), cfg.algorithm.datamodule.batch_size, cfg.algorithm.get("global_batch_size")
    if total is None:
        return check_at_least(given, "trainer.accumulate_grad_batches") if given is not None else 1
    check_at_least(total, KEY)
    k = _split(total, check_at_least(micro, "algorithm.datamodule.batch_size"), world, unit="sequences a micro-batch",
               fix="set algorithm.datamodule.batch_size to a divisor of its share per rank")
    if given is not None and given != k:
        raise UserError(f"trainer.accumulate_grad_batches={given} makes {given * micro * world} sequences a step on {world} rank(s), "
                        f"not {KEY}={total}: leave it unset (null), or set {KEY}")
    return k


def grpo_prompts_per_step(cfg: DictConfig, world: int) -> int:
    """Each rank's `algorithm.datamodule.prompts_per_step` for the GRPO recipe's global batch on `world` ranks."""
    given, group, total = cfg.algorithm.datamodule.get("prompts_per_step"), cfg.algorithm.module.num_generations, cfg.algorithm.get("global_batch_size")
    if total is None:
        return check_at_least(given, "algorithm.datamodule.prompts_per_step")
    check_at_least(total, KEY)
    per_rank = _split(total, check_at_least(group, "algorithm.module.num_generations"), world,
                      unit="completions a prompt (num_generations)", fix=f"choose a multiple of num_generations x {world}")
    if given is not None and given != per_rank:
        raise UserError(f"algorithm.datamodule.prompts_per_step={given} makes {given * group * world} completions a step on {world} "
                        f"rank(s), not {KEY}={total}: leave it unset (null), or set {KEY}")
    return per_rank

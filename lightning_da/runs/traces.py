"""traces.py: the teacher stage alone: the teacher's traces for one slice of the prompts (or all), judged by the job
that generated them, and once the cache holds every prompt the judge's splits; `status=true` says what the cache
holds. Under a multi-process `trainer` (ddp, slurm) each rank takes its own part of the slice.  `python traces.py --help`"""

from __future__ import annotations

import json
from pathlib import Path

from hydra.utils import instantiate
from lightning.pytorch.loggers import WandbLogger
from omegaconf import DictConfig, OmegaConf

from lightning_da import wandb_mode
from lightning_da.atomic import write_text_atomic
from lightning_da.distributed import launch_ranks
from lightning_da.errors import UserError, check_at_least
from lightning_da.teacher import stage_summary, summary_line, teacher_stage


def run_traces(cfg: DictConfig) -> dict:
    """This slice's traces and verdicts into the cache, the splits once it is complete; prints the summary line, and
    writes the summary (with this run's traces/s) to traces.json and the logger. Returns the summary."""
    slices = check_at_least(cfg.slices, "slices")
    if not 0 <= cfg.slice < slices:
        raise UserError(f"slice={cfg.slice}: set 0 <= slice < slices={slices}")
    spec = instantiate(cfg.spec)
    prompts = instantiate(cfg.data).load(spec.categories)
    judge = instantiate(cfg.judge)
    judge.check()  # its weights load only when it judges
    rank, run = 0, {}
    if not cfg.status:
        rank, world = launch_ranks(cfg.trainer)
        run = teacher_stage(cfg, spec, prompts, judge, rank=rank, world=world, slice_index=cfg.slice, slices=slices).stats()
    summary = {**stage_summary(cfg, spec, prompts, judge, slice_index=cfg.slice, slices=slices), **run}
    if rank == 0:
        print(summary_line(summary))
        if not cfg.status:
            write_text_atomic(Path(cfg.paths.output_dir) / "traces.json", json.dumps(summary, indent=2) + "\n")
            _log(cfg, summary)
    return summary


def _log(cfg: DictConfig, summary: dict) -> None:
    """The summary's numbers to the configured logger (a W&B run per job: offline unless WANDB_MODE says otherwise)."""
    if not cfg.get("logger"):
        return
    logger = instantiate(cfg.logger)
    logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
    logger.log_metrics({f"traces/{k}": float(v) for k, v in summary.items() if isinstance(v, (bool, int, float))})
    logger.finalize("success")
    if isinstance(logger, WandbLogger):
        wandb_mode.finish(logger.experiment)

"""The commands: `train`, `evaluate`, `generate`, `attack`, `plan` (Hydra) and `report` (argparse). The repo's train.py,
evaluate.py, generate.py, plan.py and report.py, `python -m lightning_da <command>` and the console scripts
`lightning-da-<command>` call these; each
hands over to the module of the same name in `lightning_da/runs/`, imported only once the config is
composed, so `--help` and `--cfg job` answer without loading torch."""

from __future__ import annotations

import os

import hydra
from omegaconf import DictConfig

from lightning_da.errors import run_or_exit


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def train(cfg: DictConfig) -> None:
    """Distil a reasoning teacher's safety reasoning into a student (or `algorithm=grpo`: the RL stage)."""
    from lightning_da.runs.train import run_train

    os.environ.setdefault("WANDB_MODE", "offline")  # never block on the network unless asked
    run_or_exit(run_train, cfg, name="train")


@hydra.main(version_base="1.3", config_path="conf", config_name="evaluate")
def evaluate(cfg: DictConfig) -> None:
    """Best-of-N latent attribution on a benchmark, every selector side by side."""
    from lightning_da.runs.evaluate import run_evaluate

    os.environ.setdefault("WANDB_MODE", "offline")
    run_or_exit(run_evaluate, cfg, name="evaluate")


@hydra.main(version_base="1.3", config_path="conf", config_name="generate")
def generate(cfg: DictConfig) -> None:
    """Latent Best-of-N generation: N candidates per prompt, the one least like the base kept."""
    from lightning_da.runs.generate import run_generate

    run_or_exit(run_generate, cfg, name="generate")


@hydra.main(version_base="1.3", config_path="conf", config_name="attack")
def attack(cfg: DictConfig) -> None:
    """PAIR against the deployed targets (the instruct model, the aligned student, with latent Best-of-N)."""
    from lightning_da.runs.attack import run_attack

    os.environ.setdefault("WANDB_MODE", "offline")
    run_or_exit(run_attack, cfg, name="attack")


@hydra.main(version_base="1.3", config_path="conf", config_name="plan")
def plan(cfg: DictConfig) -> None:
    """A whole study, one command per stage (experiment=paper, or paper_miniature offline)."""
    from lightning_da.runs.plan import run_plan

    run_or_exit(run_plan, cfg, name="plan")


def report(argv: list[str] | None = None) -> None:
    """The paper's tables and per-layer figure from evaluate.py runs."""
    from lightning_da.runs.report import main

    main(argv)

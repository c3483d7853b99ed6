"""The commands: `train`, `traces`, `evaluate`, `generate`, `attack`, `plan` (Hydra) and `report` (argparse). The repo's
train.py, traces.py, evaluate.py, generate.py, plan.py and report.py, `python -m lightning_da <command>` and the console scripts
`lightning-da-<command>` call these; each
hands over to the module of the same name in `lightning_da/runs/`, imported only once the config is
composed, so `--help` and `--cfg job` answer without loading torch."""

from __future__ import annotations

import functools
import sys

import hydra
from omegaconf import DictConfig

from lightning_da import wandb_mode
from lightning_da.configs import CONF_DIR
from lightning_da.errors import run_or_exit


def check_choices(argv: list[str]) -> None:
    """Every `group=name` on the command line names a file of that config group, else one line naming the
    choices and exit 2, before Hydra composes anything (its own message runs to a screenful)."""
    for arg in argv:
        key, _, value = arg.lstrip("+~").partition("=")
        group = key.split("@")[0]
        if not value or group.startswith("hydra") or "/" in group or not (CONF_DIR / group).is_dir() or "(" in value:
            continue
        choices = sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))
        unknown = [name for name in value.split(",") if name not in choices and name != "null"]
        if unknown:
            print(f"error: unknown {group}={','.join(unknown)}; choose from {', '.join(choices)} (conf/{group}/)",
                  file=sys.stderr)
            sys.exit(2)


def _checked(main):
    """A Hydra main whose config-group choices are checked first (`check_choices`)."""

    @functools.wraps(main)
    def run(*args, **kwargs):
        check_choices(sys.argv[1:])
        return main(*args, **kwargs)

    return run


@_checked
@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="train")
def train(cfg: DictConfig) -> None:
    """Distil a reasoning teacher's safety reasoning into a student (or `algorithm=grpo`: the RL stage)."""
    from lightning_da.runs.train import run_train

    wandb_mode.choose_mode()  # online when logged in, else offline: never block on the network
    run_or_exit(run_train, cfg, name="train")


@_checked
@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="traces")
def traces(cfg: DictConfig) -> None:
    """The teacher stage alone: one slice of the teacher's traces (or all), then the judge's filter."""
    from lightning_da.runs.traces import run_traces

    wandb_mode.choose_mode()
    run_or_exit(run_traces, cfg, name="traces")


@_checked
@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="evaluate")
def evaluate(cfg: DictConfig) -> None:
    """Best-of-N latent attribution on a benchmark, every selector side by side."""
    from lightning_da.runs.evaluate import run_evaluate

    wandb_mode.choose_mode()
    run_or_exit(run_evaluate, cfg, name="evaluate")


@_checked
@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="generate")
def generate(cfg: DictConfig) -> None:
    """Latent Best-of-N generation: N candidates per prompt, the one least like the base kept."""
    from lightning_da.runs.generate import run_generate

    run_or_exit(run_generate, cfg, name="generate")


@_checked
@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="attack")
def attack(cfg: DictConfig) -> None:
    """PAIR against the deployed targets (the instruct model, the aligned student, with latent Best-of-N)."""
    from lightning_da.runs.attack import run_attack

    wandb_mode.choose_mode()
    run_or_exit(run_attack, cfg, name="attack")


@_checked
@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="plan")
def plan(cfg: DictConfig) -> None:
    """A whole study, one command per stage (experiment=paper, or paper_miniature offline)."""
    from lightning_da.runs.plan import run_plan

    run_or_exit(run_plan, cfg, name="plan")


def report(argv: list[str] | None = None) -> None:
    """The paper's tables and per-layer figure from evaluate.py runs."""
    from lightning_da.runs.report import main

    main(argv)

"""Distil a reasoning teacher's safety reasoning into a student.  `python train.py --help`"""

import os

import hydra
from omegaconf import DictConfig

os.environ.setdefault("WANDB_MODE", "offline")  # never block on the network unless asked


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> None:
    from lightning_da.errors import run_or_exit
    from lightning_da.pipeline import run_train

    run_or_exit(run_train, cfg, name="train")


if __name__ == "__main__":
    main()

"""Distil a reasoning teacher's safety reasoning into a student.  `python train.py --help`"""

import logging
import os
import sys

import hydra
from omegaconf import DictConfig

os.environ.setdefault("WANDB_MODE", "offline")  # never block on the network unless asked


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> None:
    from lightning_da.errors import find_user_error
    from lightning_da.pipeline import run_train

    try:
        run_train(cfg)
    except Exception as exc:
        user_error = find_user_error(exc)
        if user_error is None:
            raise
        logging.getLogger("train").error("error: %s", user_error)
        sys.exit(2)


if __name__ == "__main__":
    main()

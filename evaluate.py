"""Best-of-N latent attribution on a benchmark, every selector side by side.  `python evaluate.py --help`"""

import os

import hydra
from omegaconf import DictConfig

os.environ.setdefault("WANDB_MODE", "offline")  # never block on the network unless asked


@hydra.main(version_base="1.3", config_path="conf", config_name="evaluate")
def main(cfg: DictConfig) -> None:
    from lightning_da.errors import run_or_exit
    from lightning_da.evaluation import run_evaluate

    run_or_exit(run_evaluate, cfg, name="evaluate")


if __name__ == "__main__":
    main()

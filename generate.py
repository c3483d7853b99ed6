"""Latent Best-of-N generation: N candidates per prompt, the one least like the base kept.  `python generate.py --help`"""

import hydra
from omegaconf import DictConfig


@hydra.main(version_base="1.3", config_path="conf", config_name="generate")
def main(cfg: DictConfig) -> None:
    from lightning_da.errors import run_or_exit
    from lightning_da.latent_best_of_n import run_generate

    run_or_exit(run_generate, cfg, name="generate")


if __name__ == "__main__":
    main()

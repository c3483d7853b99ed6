"""The Hydra configs, shipped inside the package so that an installed wheel composes them too."""

from pathlib import Path

CONF_DIR = Path(__file__).resolve().parent

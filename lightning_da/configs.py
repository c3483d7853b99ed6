"""Where the Hydra configs are: the top-level conf/ of a checkout, which the wheel ships inside the package as
lightning_da/conf (pyproject's package-dir mapping), so that an installed package composes them from any directory."""

from pathlib import Path

_PACKAGED = Path(__file__).resolve().parent / "conf"
CONF_DIR = _PACKAGED if _PACKAGED.is_dir() else Path(__file__).resolve().parents[1] / "conf"

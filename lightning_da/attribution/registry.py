"""The selectors of one evaluation, each built from its own `conf/attribution/<name>.yaml` node."""

from __future__ import annotations

from hydra.utils import instantiate
from omegaconf import DictConfig

from lightning_da.attribution.selectors import Selector
from lightning_da.errors import UserError


def build_selectors(cfg: DictConfig) -> dict[str, Selector]:
    """Config key -> selector, in report order: `first` (every drop is measured against it), the
    primary one (`attribution`), then each name in `compare` from its node `selectors.<name>`."""
    available = cfg.get("selectors") or {}
    unknown = [name for name in cfg.compare if name not in available]
    if unknown:
        raise UserError(f"unknown selector(s) {unknown} in compare; choose from {sorted(available)}")
    primary: Selector = instantiate(cfg.attribution)
    selectors = {} if primary.name == "first" else {"selectors.first": instantiate(available["first"])}
    selectors["attribution"] = primary
    for name in cfg.compare:
        if name not in {s.name for s in selectors.values()}:
            selectors[f"selectors.{name}"] = instantiate(available[name])
    return selectors


def check_selectors(selectors: dict[str, Selector], num_states: int) -> None:
    """Every configured value checked against the model before any sampling."""
    for key, selector in selectors.items():
        selector.check(num_states, key)

"""The selectors of one evaluation, each built from its own `conf/attribution/<name>.yaml` node."""

from __future__ import annotations

import logging

from hydra.utils import instantiate
from omegaconf import DictConfig

from lightning_da.attribution.selectors import Selector
from lightning_da.errors import UserError

log = logging.getLogger(__name__)


def build_selectors(cfg: DictConfig) -> dict[str, Selector]:
    """Config key -> selector, in report order: `first` (every drop is measured against it), the
    primary one (`attribution`), then each name in `compare` from its node `selectors.<name>`. A model
    evaluated as it is (`as_is`) has no base: the selectors that need one are left out, and `first`
    is the primary if `attribution` needs one."""
    available = cfg.get("selectors") or {}
    unknown = [name for name in cfg.compare if name not in available]
    if unknown:
        raise UserError(f"unknown selector(s) {unknown} in compare; choose from {sorted(available)}")
    with_base = not cfg.get("as_is")
    primary: Selector = instantiate(cfg.attribution)
    if primary.needs_base and not with_base:
        log.info("as_is=%s: no base, so %s cannot select; first is the primary selector", cfg.as_is, primary.name)
        primary = instantiate(available["first"])
    selectors = {} if primary.name == "first" else {"selectors.first": instantiate(available["first"])}
    selectors["attribution"] = primary
    for name in cfg.compare:
        if name not in {s.name for s in selectors.values()}:
            selector = instantiate(available[name])
            if with_base or not selector.needs_base:
                selectors[f"selectors.{name}"] = selector
    return selectors


def check_selectors(selectors: dict[str, Selector], num_states: int) -> None:
    """Every configured value checked against the model before any sampling."""
    for key, selector in selectors.items():
        selector.check(num_states, key)

"""Adaptive attacks on a deployed target: PAIR (Chao et al. 2023) and TAP (Mehrotra et al. 2023)."""

from lightning_da.attack.pair import PAIR
from lightning_da.attack.search import AttackerRequest, BehaviourResult, Turn, parse_attacker_reply
from lightning_da.attack.tap import TAP

__all__ = ["PAIR", "TAP", "AttackerRequest", "BehaviourResult", "Turn", "parse_attacker_reply"]

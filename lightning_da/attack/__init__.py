"""Adaptive attacks on a deployed target: PAIR (Chao et al. 2023)."""

from lightning_da.attack.pair import PAIR, AttackerRequest, BehaviourResult, Turn, parse_attacker_reply

__all__ = ["PAIR", "AttackerRequest", "BehaviourResult", "Turn", "parse_attacker_reply"]

from lightning_da.algorithms.grpo import GRPOModule
from lightning_da.algorithms.sft import SFTModule

__all__ = ["GRPOModule", "SFTModule"]

from lightning_da.modules.grpo import GRPOModule
from lightning_da.modules.sft import SFTModule

__all__ = ["GRPOModule", "SFTModule"]

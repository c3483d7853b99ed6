from lightning_da.modules.sft import SFTModule

__all__ = ["SFTModule"]

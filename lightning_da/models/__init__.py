from lightning_da.models.loading import EmbeddedSmolLM2, HubModel, ModelSource, TinyRandomLlama
from lightning_da.models.lora import apply_lora

__all__ = ["EmbeddedSmolLM2", "HubModel", "ModelSource", "TinyRandomLlama", "apply_lora"]

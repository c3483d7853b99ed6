"""LoRA through peft: wrap a student for training, or load a trained adapter onto it."""

from __future__ import annotations

import warnings
from collections.abc import Sequence

from peft import LoraConfig, PeftModel, get_peft_model
from transformers import PreTrainedModel


def apply_lora(
    model: PreTrainedModel,
    *,
    r: int = 32,
    alpha: int = 64,
    dropout: float = 0.05,
    target_modules: str | Sequence[str] = "all-linear",
    modules_to_save: Sequence[str] | None = ("lm_head",),
) -> PeftModel:
    """The paper's adapter: r 32, alpha 64, dropout 0.05, on every linear layer, lm_head trained in full.

    With tied embeddings (SmolLM2, Qwen2.5-0.5B) the trained lm_head is a copy: the input
    embeddings stay the base's, and disabling the adapter gives back the base model exactly.
    """
    config = LoraConfig(
        task_type="CAUSAL_LM",
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=target_modules if isinstance(target_modules, str) else list(target_modules),
        modules_to_save=list(modules_to_save) if modules_to_save else None,
    )
    with warnings.catch_warnings():  # peft warns about the untied copy, which is what we want
        warnings.filterwarnings("ignore", message=".*tie_word_embeddings.*")
        return get_peft_model(model, config)


def load_adapter(model: PreTrainedModel, adapter_dir: str, *, trainable: bool = False) -> PeftModel:
    """A saved adapter on its base; `trainable=True` to keep training it (e.g. GRPO from SFT)."""
    peft_model = PeftModel.from_pretrained(model, adapter_dir, is_trainable=trainable)
    if not trainable:  # peft leaves the modules_to_save copies (lm_head) trainable
        peft_model.requires_grad_(False)
    return peft_model

"""What differs between the transformers releases we run on: the newest, and the 5.16-5.20 the `vllm`
extra pins (vLLM 0.33 requires transformers below 5.21; `make test-vllm-compat` runs there)."""

from __future__ import annotations

import transformers
from packaging.version import Version
from transformers import PreTrainedModel

# transformers 5.24 renamed `past_key_values` to `cache` (the old name warns, and goes in 5.40).
CACHE_KEYWORD = "cache" if Version(transformers.__version__) >= Version("5.24.0") else "past_key_values"


def with_cache(cache) -> dict:
    """`{keyword: cache}` for a forward or `generate` of the installed transformers."""
    return {CACHE_KEYWORD: cache}


def enable_activation_checkpointing(model: PreTrainedModel, kwargs: dict | None = None) -> None:
    """The model's activation checkpointing: `activation_checkpointing_enable` where transformers has it (its
    `gradient_checkpointing_enable` then warns, deprecated), the older name before."""
    enable = getattr(model, "activation_checkpointing_enable", None)
    if enable is not None:
        enable(kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)

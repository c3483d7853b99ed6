"""What the benchmarks share: a trained-looking LoRA adapter on a student."""

from __future__ import annotations

from pathlib import Path

import torch


def save_random_adapter(model, path: Path) -> None:
    """`model` with a LoRA adapter of random nonzero A/B weights (a fresh one is the identity; lm_head
    as initialised), saved to `path`."""
    from lightning_da.models import apply_lora

    torch.manual_seed(0)
    peft_model = apply_lora(model, dropout=0.0)
    with torch.no_grad():
        for param in peft_model.parameters():
            if param.requires_grad and param.dim() == 2 and param.size(0) < 1000:  # LoRA A/B, not lm_head
                param.add_(torch.randn_like(param) * 0.01)
    peft_model.save_pretrained(path)

"""The student as evaluate.py, generate.py and `LatentBestOfN` configure it: `student=` with `adapter=`
(the base is the adapter disabled) or, for a fully fine-tuned student, `base=`."""

from __future__ import annotations

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from lightning_da.errors import UserError
from lightning_da.models.lora import load_adapter


def load_student(cfg: DictConfig, device: torch.device | str):
    """(model, base, tokenizer) on `device`: the adapter on the student, base = adapter disabled
    (None); or, for a fully fine-tuned student, a separately loaded `base`."""
    source = instantiate(cfg.student.model)
    tokenizer = source.load_tokenizer()
    if cfg.adapter:
        model, base = load_adapter(source.load_model(), cfg.adapter, model_name=source.name), None
    elif cfg.base:
        model, base = source.load_model(), instantiate(cfg.base).load_model().eval()
    else:
        raise UserError("set adapter=<train run>/adapter (the base is the student with it disabled), or base=... for a fully fine-tuned student")
    return model.eval().to(device), (base.to(device) if base is not None else None), tokenizer



def student_sampling(cfg: DictConfig):
    """`student.sampling` with the run's `max_new_tokens` (evaluate.py, generate.py) when set."""
    overrides = {"max_new_tokens": cfg.max_new_tokens} if cfg.get("max_new_tokens") is not None else {}
    return instantiate(cfg.student.sampling, **overrides)

"""The student as evaluate.py, generate.py and `LatentBestOfN` configure it: `student=` with `adapter=`
(the base is the adapter disabled) or, for a fully fine-tuned student, `base=`; and the engine that
samples its candidates (`generation.backend`)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from lightning_da.errors import UserError
from lightning_da.generation import VLLMGenerator, check_backend
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


def candidate_sampler(cfg: DictConfig) -> Callable | None:
    """vLLM's `sample_completions` when `generation.backend=vllm`, else None (Hugging Face `generate`
    on the loaded student). Build it before loading the student, so vLLM takes its memory first."""
    if not check_backend(cfg.generation):
        return None
    generator = VLLMGenerator(instantiate(cfg.student.model), instantiate(cfg.generation.vllm), adapter=cfg.adapter,
                              cache_dir=cfg.paths.cache_dir, seed=cfg.seed)
    return generator.sample_completions

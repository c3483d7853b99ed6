"""The teacher stage: load the teacher (Hugging Face, or a vLLM engine under `generation.backend=vllm`),
sample its traces with the spec in context, and keep them in the resumable trace cache."""

from __future__ import annotations

import gc
from functools import partial

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from lightning_da.data.prompts import prompts_fingerprint
from lightning_da.data.traces import TraceCache, generate_traces
from lightning_da.generation import VLLMGenerator, batch_seed, check_backend, sample_chats


def release_memory() -> None:
    """Return freed model memory (after the caller dropped its references) before the next model loads."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def trace_cache(cfg: DictConfig, spec, prompts) -> TraceCache:
    """The cache of the teacher's traces for `prompts` with `spec` in context, keyed by everything that determines
    them (nothing loads)."""
    return TraceCache(
        cfg.paths.cache_dir,
        {
            "teacher": instantiate(cfg.teacher.model).identity(),
            "prompts": prompts_fingerprint(prompts),
            "spec": spec.identity(),
            **spec.reads(prompts),
            "sampling": instantiate(cfg.teacher.sampling).as_dict(),
            "samples_per_prompt": cfg.teacher.samples_per_prompt,
            "demonstrations": OmegaConf.to_container(cfg.teacher.demonstrations),
            "seed": cfg.seed,
            # Engines sample differently from the same seed; hf keys stay as they were.
            **({"backend": cfg.generation.backend} if check_backend(cfg.generation) else {}),
        },
    )


def teacher_traces(cfg: DictConfig, spec, prompts, *, slice_index: int = 0, slices: int = 1):
    """(cache, traces): the teacher's traces for `prompts` with `spec` in context, generated, resumed or reused from
    the cache (`trace_cache`); with `slices`, only this slice's batches are generated, and the traces are None until
    every slice has run."""
    cache = trace_cache(cfg, spec, prompts)
    if cache.complete:
        return cache, cache.dataset()
    source, sampling = instantiate(cfg.teacher.model), instantiate(cfg.teacher.sampling)
    traces = generate_traces(cache, prompts, teacher_sampler(cfg, source, spec, sampling), batch_size=cfg.teacher.batch_size,
                             slice_index=slice_index, slices=slices)
    release_memory()
    return cache, traces


def teacher_sampler(cfg: DictConfig, source, spec, sampling):
    """`generate(rows, first_index) -> samples_per_prompt traces per row`, over the loaded teacher (the
    model lives as long as the closure)."""
    tokenizer = source.load_tokenizer()
    if check_backend(cfg.generation):
        engine = VLLMGenerator(source, instantiate(cfg.generation.vllm), cache_dir=cfg.paths.cache_dir, seed=cfg.seed)
        sample = partial(engine.sample_chats, tokenizer)
    else:
        model = source.load_model().eval()
        if getattr(source, "device_map", None) is None and torch.cuda.is_available():
            model = model.cuda()
        sample = partial(sample_chats, model, tokenizer)
    k = cfg.teacher.samples_per_prompt

    def generate(rows: list[dict], first_index: int) -> list[list[str]]:
        chats = [spec.teacher_chat(row, cfg.teacher.demonstrations) for row in rows]
        outputs = sample(chats, sampling, num_return_sequences=k, seed=batch_seed(cfg.seed, first_index))
        return [outputs[i : i + k] for i in range(0, len(outputs), k)]

    return generate

"""GRPO's rollouts from a vLLM engine colocated with the trainer (`generation.backend=vllm` with
`algorithm=grpo`), as TRL's colocate mode: one engine per rank on the rank's own GPU (see
`vllm_engine.placement`), taking `generation.vllm.gpu_memory_utilization` of it while awake.

The engine samples from the current policy. Before a rollout that follows an optimizer step (and
before every rollout with `sleep_mode`, whose level 2 frees the engine's weights while the policy
trains) the policy's weights are loaded into the engine's model (vLLM's `load_weights`, under
Hugging Face names): every base weight with its LoRA update merged in (W + scaling B A, computed
here from the full tensors, so the same under DDP and FSDP2, where each is gathered from its shards
and every rank loads the same weights), and the trained copies (`modules_to_save`, the paper's
lm_head) in place of the originals. vLLM's LoRA path cannot carry a trained lm_head, and a model
with tied embeddings would drop it silently (vLLM skips `lm_head.weight` as an alias of the input
embeddings), so such a policy's engine starts from an untied copy of the student, saved once.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import random
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from lightning_da.generation.completions import Completion
from lightning_da.generation.sampling import SamplingConfig
from lightning_da.generation.vllm_engine import VLLMGenerator, VLLMSettings
from lightning_da.models.loading import save_pretrained_dir

log = logging.getLogger(__name__)

PEFT_PREFIX = "base_model.model."
TRAINED_COPY = "modules_to_save.default."


def _full(tensor: torch.Tensor) -> torch.Tensor:
    """The whole tensor: gathered from its shards under FSDP2 (a collective), as is otherwise. A shard FSDP keeps on
    the CPU (`cpu_offload`) goes to this rank's GPU first: NCCL cannot gather CPU tensors (as TRL does)."""
    if not hasattr(tensor, "full_tensor"):
        return tensor
    if tensor.is_cpu and torch.cuda.is_available():
        tensor = tensor.to(torch.cuda.current_device())
    return tensor.full_tensor()


@contextlib.contextmanager
def training_rng():
    """The global random generators (Python's, NumPy's, torch's on the CPU and every GPU) as they were before: building
    a vLLM engine in this process reseeds them all to the engine's seed (vLLM's `set_random_seed`), which would change
    the training's dropout masks and break an exact resume."""
    python, numpy = random.getstate(), np.random.get_state()
    try:
        with torch.random.fork_rng(devices=range(torch.cuda.device_count()) if torch.cuda.is_available() else []):
            yield
    finally:
        random.setstate(python)
        np.random.set_state(numpy)


@torch.no_grad()
def policy_weights(policy: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """The policy's (a peft LoRA model's) weights as the plain model would name and hold them: LoRA merged into
    each base weight, a trained copy (`modules_to_save`) under the original's name, the originals and the LoRA
    factors left out. Every rank must iterate it under FSDP (each weight is gathered from all ranks)."""
    for name, param in policy.named_parameters():
        if "lora_" in name or ".original_module." in name:
            continue
        weight = _full(param.detach())
        if ".base_layer." in name:
            layer = policy.get_submodule(name.split(".base_layer.")[0])
            if name.endswith(".weight"):
                for adapter in layer.active_adapters:
                    a, b = _full(layer.lora_A[adapter].weight), _full(layer.lora_B[adapter].weight)
                    weight = weight + (b @ a).to(weight.dtype) * layer.scaling[adapter]
            name = name.replace(".base_layer.", ".")
        yield name.removeprefix(PEFT_PREFIX).replace(TRAINED_COPY, ""), weight


def trains_tied_head(policy: nn.Module) -> bool:
    """Whether the policy trains its own lm_head while the plain model ties it to the input embeddings."""
    tied = getattr(policy.config, "tie_word_embeddings", False)
    return bool(tied) and any(TRAINED_COPY in name and "lm_head" in name for name, _ in policy.named_parameters())


def untied_student(source, cache_dir: str | Path) -> Path:
    """A copy of the student whose lm_head is its own weight (initially the input embeddings), saved once under
    `cache_dir` keyed by the student: an engine that can load a trained lm_head."""
    digest = hashlib.sha256(json.dumps(source.identity(), sort_keys=True).encode()).hexdigest()[:16]
    target = Path(cache_dir) / "untied" / digest
    if not (target / "config.json").is_file():
        log.info("an untied copy of the student for vLLM -> %s (once)", target)
        model = source.load_model()
        model.config.tie_word_embeddings = False
        model.lm_head.weight = nn.Parameter(model.get_input_embeddings().weight.detach().clone())
        save_pretrained_dir(target, model, source.load_tokenizer())
    return target


class PolicyEngine:
    """This rank's engine for the policy `policy` (the module's peft model) of student `source`."""

    def __init__(self, source, settings: VLLMSettings, *, policy: nn.Module, cache_dir: str | Path, seed: int = 0,
                 rollouts: int | None = None):
        """`rollouts`: this rank's rollouts per generation; the group's (x tensor_parallel_size) are the engine's
        `max_num_seqs` unless `generation.vllm.max_num_seqs` says otherwise (TRL's), and `max_num_batched_tokens`
        is 4096 unless set (TRL's: vLLM's memory profiler is misled by its larger default)."""
        settings = replace(settings, max_num_seqs=settings.max_num_seqs or (rollouts and rollouts * settings.tensor_parallel_size),
                           max_num_batched_tokens=settings.max_num_batched_tokens or 4096)
        self.settings = settings
        model_dir = untied_student(source, cache_dir) if trains_tied_head(policy) else None
        with training_rng():
            self.generator = VLLMGenerator(source, settings, cache_dir=cache_dir, seed=seed, model_dir=model_dir, engine_args={
                "enable_sleep_mode": settings.sleep_mode,
                "logprobs_mode": "processed_logprobs",  # after temperature: the distribution the trainer's log-probs are of
            })
        self.llm = self.generator.llm
        self.loaded: int | None = None  # the policy version the engine holds
        if settings.sleep_mode:
            self.llm.sleep(level=2)

    def load(self, policy: nn.Module) -> None:
        """The policy's current weights into the engine (a collective under FSDP: every rank at once)."""
        self.llm.llm_engine.model_executor.driver_worker.model_runner.model.load_weights(policy_weights(policy))
        self.llm.reset_prefix_cache()

    def sample(self, policy: nn.Module, version: int, prompt_ids: list[list[int]], tokenizer: PreTrainedTokenizerBase, *,
               n: int, sampling: SamplingConfig, seed: int) -> list[list[Completion]]:
        """`n` rollouts of each prompt from the policy as of `version` (the optimizer steps taken), with the engine's
        log-probability of each token; the engine asleep again afterwards with `sleep_mode`."""
        sleeps = self.settings.sleep_mode
        if sleeps:
            if torch.cuda.is_available():
                torch.cuda.empty_cache()  # what training freed, for the engine's weights
            self.llm.wake_up(tags=["weights"])
        if sleeps or version != self.loaded:
            self.load(policy)
            self.loaded = version
        if sleeps:
            self.llm.wake_up(tags=["kv_cache"])
        if self.generator.tp_group is not None:
            # TRL (its issue 3671): with PEFT, DDP's small all-reduce can still be draining NCCL's channels when the
            # group's engine starts its own collectives, and generate hangs; a barrier on the default group first.
            torch.distributed.barrier(**({"device_ids": [torch.cuda.current_device()]} if torch.cuda.is_available() else {}))
        try:
            return self.generator.generate_ids(prompt_ids, tokenizer, n=n, sampling=sampling, seed=seed, progress=False,
                                               logprobs=True)
        finally:
            if sleeps:
                self.llm.sleep(level=2)

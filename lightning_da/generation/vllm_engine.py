"""The vLLM generation backend (`generation.backend=vllm`, extra `vllm`): teacher traces and Best-of-N
candidates from a vLLM engine instead of Hugging Face `generate`.

Prompts go in as token ids (the chat template and `<think>` prefix of `lightning_da.formats`, the
same ids the `hf` backend and the scoring pass use) and completions come back as the sampled ids,
decoded here by the tokenizer, as in the `hf` backend. Each prompt's request carries its own seed
(`seed + its index`), so what it samples does not depend on batching or on other ranks.

An adapter reaches vLLM as a LoRA request when vLLM can load it; vLLM loads no adapter with
`modules_to_save` (the paper's adapter trains lm_head in full), so such an adapter is merged into
a copy of the student once (`lora: auto`), cached by the adapter's content.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from hydra.utils import instantiate
from transformers import GenerationConfig, PreTrainedTokenizerBase

from lightning_da.errors import UserError, check_at_least
from lightning_da.formats import eos_ids, prefix_ids
from lightning_da.generation.completions import Completion, batch_seed
from lightning_da.generation.sampling import SamplingConfig
from lightning_da.models.loading import save_pretrained_dir
from lightning_da.models.lora import check_adapter_dir, load_adapter
from lightning_da.models.student import evaluated_node

log = logging.getLogger(__name__)

LORA_MODES = ("auto", "request", "merge")


@dataclass
class VLLMSettings:
    """The engine's settings (`generation.vllm`): tensor parallelism across GPUs, the share of each GPU's
    memory vLLM may take (leave room for the scoring model in evaluate.py), the longest sequence, and
    how an adapter is applied (`auto`: a LoRA request, or merged when vLLM cannot load it)."""

    tensor_parallel_size: int = 1
    gpu_memory_utilization: float = 0.5
    max_model_len: int | None = None
    dtype: str = "auto"
    enforce_eager: bool = False
    lora: str = "auto"
    max_lora_rank: int = 64

    def __post_init__(self) -> None:
        check_at_least(self.tensor_parallel_size, "generation.vllm.tensor_parallel_size")
        check_at_least(self.max_model_len, "generation.vllm.max_model_len", optional=True)
        if not 0 < self.gpu_memory_utilization <= 1:
            raise UserError(f"generation.vllm.gpu_memory_utilization={self.gpu_memory_utilization}: set a fraction in (0, 1]")
        if self.lora not in LORA_MODES:
            raise UserError(f"generation.vllm.lora={self.lora}: use one of {', '.join(LORA_MODES)}")


BACKENDS = ("hf", "vllm")


def check_backend(generation_cfg) -> bool:
    """Whether the `generation` config picks vLLM; a UserError for an unknown backend."""
    if generation_cfg.backend not in BACKENDS:
        raise UserError(f"generation.backend={generation_cfg.backend}: use one of {', '.join(BACKENDS)}")
    return generation_cfg.backend == "vllm"


def import_vllm():
    try:
        import vllm
    except ImportError:
        raise UserError("generation.backend=vllm needs vLLM: pip install -e '.[vllm]' on a Linux machine with a CUDA "
                        "GPU, or use generation.backend=hf") from None
    return vllm


def _adapter_mode(adapter_dir: Path, settings: VLLMSettings) -> str:
    """`merge` or `request`; a request needs vLLM's `max_lora_rank` to cover the adapter's rank."""
    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    mode = settings.lora if settings.lora != "auto" else "merge" if config.get("modules_to_save") else "request"
    if mode == "request" and config.get("r", 0) > settings.max_lora_rank:
        raise UserError(f"the adapter's LoRA rank {config['r']} exceeds generation.vllm.max_lora_rank="
                        f"{settings.max_lora_rank}; raise it, or set generation.vllm.lora=merge")
    return mode


def merged_student(source, adapter_dir: str | Path, cache_dir: str | Path) -> Path:
    """The student with the adapter merged into its weights, saved once under `cache_dir` (keyed by the
    student and the adapter's files) for an engine that cannot apply the adapter itself."""
    adapter_dir = Path(adapter_dir)
    digest = hashlib.sha256(json.dumps(source.identity(), sort_keys=True).encode())
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        digest.update((adapter_dir / name).read_bytes())
    target = Path(cache_dir) / "merged" / digest.hexdigest()[:16]
    if not (target / "config.json").is_file():
        log.info("merging %s into the student for vLLM -> %s (once)", adapter_dir, target)
        merged = load_adapter(source.load_model(), adapter_dir, model_name=source.name).merge_and_unload()
        save_pretrained_dir(target, merged, source.load_tokenizer())
    return target


class VLLMGenerator:
    """A vLLM engine on `source` (a model source of `lightning_da.models`), with `adapter` applied."""

    def __init__(self, source, settings: VLLMSettings, *, adapter: str | Path | None = None, cache_dir: str | Path,
                 seed: int = 0):
        vllm = import_vllm()
        self.vllm = vllm
        model_dir, self.lora_request = source.local_dir(), None
        if adapter is not None:
            check_adapter_dir(adapter)
            if _adapter_mode(Path(adapter), settings) == "merge":
                model_dir = merged_student(source, adapter, cache_dir)
            else:
                from vllm.lora.request import LoRARequest

                self.lora_request = LoRARequest("adapter", 1, str(adapter))
        self.model_dir = model_dir
        self.llm = vllm.LLM(
            model=str(model_dir), tokenizer=str(model_dir), trust_remote_code=getattr(source, "trust_remote_code", False),
            tensor_parallel_size=settings.tensor_parallel_size, gpu_memory_utilization=settings.gpu_memory_utilization,
            max_model_len=settings.max_model_len, dtype=settings.dtype, enforce_eager=settings.enforce_eager,
            enable_lora=self.lora_request is not None, max_lora_rank=settings.max_lora_rank, seed=seed,
        )

    def _params(self, sampling: SamplingConfig, *, n: int, seed: int, stop_token_ids: list[int]):
        common = {"n": n, "max_tokens": sampling.max_new_tokens, "seed": seed, "stop_token_ids": stop_token_ids,
                  "repetition_penalty": 1.0}
        if not sampling.do_sample:
            return self.vllm.SamplingParams(temperature=0.0, **common)
        return self.vllm.SamplingParams(temperature=sampling.temperature, top_p=sampling.top_p,
                                        top_k=sampling.top_k or -1, **common)  # -1: no top-k cut

    def generate_ids(self, prompt_ids: list[list[int]], tokenizer: PreTrainedTokenizerBase, *, n: int,
                     sampling: SamplingConfig, seed: int, progress: bool = True) -> list[list[Completion]]:
        """`n` completions of each prompt (token ids), prompt i seeded `seed + i`; each ends at its first
        EOS (kept, as in the `hf` backend) or is `truncated` by `max_new_tokens`."""
        eos = _eos_ids(self.model_dir, tokenizer)
        params = [self._params(sampling, n=n, seed=batch_seed(seed, i), stop_token_ids=eos) for i in range(len(prompt_ids))]
        outputs = self.llm.generate([{"prompt_token_ids": ids} for ids in prompt_ids], params,
                                    lora_request=self.lora_request, use_tqdm=progress)
        return [[Completion(list(o.token_ids), o.finish_reason == "length") for o in out.outputs] for out in outputs]

    def sample_completions(self, tokenizer: PreTrainedTokenizerBase, prompts: list[str], *, n: int,
                           sampling: SamplingConfig, seed: int = 0, progress: bool = True, **_) -> list[list[Completion]]:
        """Best-of-N candidates after each prompt's shared prefix, as `generation.sample_completions`."""
        return self.generate_ids([prefix_ids(tokenizer, p) for p in prompts], tokenizer, n=n, sampling=sampling,
                                 seed=seed, progress=progress)

    def sample_chats(self, tokenizer: PreTrainedTokenizerBase, chats: list[list[dict]], sampling: SamplingConfig, *,
                     num_return_sequences: int = 1, seed: int = 0, continuation: str = "") -> list[str]:
        """Completions of each chat, grouped by chat, special tokens removed: as `generation.sample_chats`."""
        texts = [tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True) + continuation for chat in chats]
        ids = tokenizer(texts, add_special_tokens=False)["input_ids"]  # the template holds BOS where wanted
        completions = self.generate_ids(ids, tokenizer, n=num_return_sequences, sampling=sampling, seed=seed)
        return [continuation + t for t in tokenizer.batch_decode([c.ids for row in completions for c in row], skip_special_tokens=True)]



def _eos_ids(model_dir: str | Path, tokenizer: PreTrainedTokenizerBase) -> list[int]:
    try:
        configured = GenerationConfig.from_pretrained(model_dir).eos_token_id
    except OSError:  # no generation_config.json
        configured = None
    return eos_ids(configured, tokenizer)


def candidate_sampler(cfg) -> Callable | None:
    """vLLM's `sample_completions` for the evaluated model (the student; `as_is=teacher`: the teacher) of an
    evaluate.py or generate.py config when
    `generation.backend=vllm`, else None (Hugging Face `generate` on the loaded student). Build it before
    loading the student, so vLLM takes its memory first."""
    if not check_backend(cfg.generation):
        return None
    generator = VLLMGenerator(instantiate(evaluated_node(cfg).model), instantiate(cfg.generation.vllm), adapter=cfg.adapter,
                              cache_dir=cfg.paths.cache_dir, seed=cfg.seed)
    return generator.sample_completions

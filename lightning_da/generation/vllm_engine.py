"""The vLLM generation backend (`generation.backend=vllm`, extra `vllm`): teacher traces, Best-of-N
candidates, PAIR's attacker and GRPO's rollouts (`lightning_da.generation.colocated`) from a vLLM
engine instead of Hugging Face `generate`.

Prompts go in as token ids (the chat template and `<think>` prefix of `lightning_da.formats`, the
same ids the `hf` backend and the scoring pass use) and completions come back as the sampled ids,
decoded here by the tokenizer, as in the `hf` backend. Each prompt's request carries its own seed,
so what it samples does not depend on batching or on other ranks: vLLM seeds a request's j-th sample
`seed + j`, so prompt i's request is seeded `(seed + i) n` and no two samples share a random stream.
Greedy requests go with n = 1 (vLLM refuses more) and the completion is copied n times.

Under data parallelism (`trainer=ddp`) each rank starts its own engine on its own GPU, as TRL's
colocate mode does: vLLM's `external_launcher` backend on the rank's `LOCAL_RANK`, and with
`tensor_parallel_size` k > 1 each group of k consecutive ranks shares one engine, every rank of it
sending the group's prompts (vLLM's tensor parallel workers run in lockstep) and keeping its own.

An adapter reaches vLLM as a LoRA request when vLLM can load it; vLLM loads no adapter with
`modules_to_save` (the paper's adapter trains lm_head in full), DoRA, a LoRA bias or a base-modifying
initialisation (PiSSA, OLoRA, ...), so such an adapter is merged into a copy of the student once
(`lora: auto`), cached by the adapter's content.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from hydra.utils import instantiate
from transformers import GenerationConfig, PreTrainedTokenizerBase

from lightning_da.errors import UserError, check_at_least
from lightning_da.formats import eos_ids, prefix_ids
from lightning_da.generation.completions import Completion, batch_seed
from lightning_da.generation.sampling import SamplingConfig
from lightning_da.generation.teacher_chats import chat_texts
from lightning_da.models.loading import save_pretrained_dir
from lightning_da.models.lora import check_adapter_dir, load_adapter
from lightning_da.models.student import evaluated_node
from lightning_da.models.vocabulary import adapter_has_think_tokens

log = logging.getLogger(__name__)

LORA_MODES = ("auto", "request", "merge")
LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # vLLM's `max_lora_rank` choices
LORA_INITS = ("gaussian", "eva", "orthogonal", "mica", "lora_ga")  # named inits vLLM loads (the rest modify the base)
MAX_TEMPERATURE = 2.0  # vLLM refuses a higher one


@dataclass
class VLLMSettings:
    """The engine's settings (`generation.vllm`): tensor parallelism across GPUs, the share of each GPU's
    memory vLLM may take (leave room for the scoring model in evaluate.py, for training in GRPO), the
    longest sequence (-1: the model's context, or the longest that fits in that memory), how an adapter is
    applied (`auto`: a LoRA request, or merged when vLLM cannot load it), and whether GRPO's engine sleeps
    (vLLM's sleep mode, level 2: weights and cache freed) while the policy trains."""

    tensor_parallel_size: int = 1
    gpu_memory_utilization: float = 0.9
    max_model_len: int = -1
    dtype: str = "auto"
    enforce_eager: bool = False
    lora: str = "auto"
    max_lora_rank: int = 64
    sleep_mode: bool = True
    max_num_seqs: int | None = None  # sequences in flight; null: vLLM's default (GRPO's engine: its group's rollouts per step)
    max_num_batched_tokens: int | None = None  # tokens per engine step; null: vLLM's (GRPO's engine: 4096, TRL's)

    def __post_init__(self) -> None:
        check_at_least(self.tensor_parallel_size, "generation.vllm.tensor_parallel_size")
        if self.max_model_len is None or (self.max_model_len != -1 and self.max_model_len < 1):
            raise UserError(f"generation.vllm.max_model_len={self.max_model_len}: set the longest sequence in tokens, "
                            "or -1 for the model's context as far as memory allows")
        if not 0 < self.gpu_memory_utilization <= 1:
            raise UserError(f"generation.vllm.gpu_memory_utilization={self.gpu_memory_utilization}: set a fraction in (0, 1]")
        if self.lora not in LORA_MODES:
            raise UserError(f"generation.vllm.lora={self.lora}: use one of {', '.join(LORA_MODES)}")
        for key in ("max_num_seqs", "max_num_batched_tokens"):
            if getattr(self, key) is not None:
                check_at_least(getattr(self, key), f"generation.vllm.{key}")
        if self.max_lora_rank not in LORA_RANKS:
            raise UserError(f"generation.vllm.max_lora_rank={self.max_lora_rank}: vLLM takes one of "
                            f"{', '.join(map(str, LORA_RANKS))}")


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


def request_blockers(config: dict) -> list[str]:
    """Why vLLM cannot load an adapter (its adapter_config.json) as a LoRA request; empty if it can."""
    init = config.get("init_lora_weights", True)
    reasons = {
        "it trains whole modules (modules_to_save)": bool(config.get("modules_to_save")),
        "DoRA": bool(config.get("use_dora")),
        "a LoRA bias": bool(config.get("lora_bias")) or config.get("bias", "none") != "none",
        f"init_lora_weights={init}": isinstance(init, str) and init.lower() not in LORA_INITS,
    }
    return [reason for reason, applies in reasons.items() if applies]


def _adapter_mode(adapter_dir: Path, settings: VLLMSettings) -> str:
    """`merge` or `request`; a request needs what vLLM loads and its `max_lora_rank` to cover the adapter's rank."""
    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    blockers = request_blockers(config) + (["it adds <think> and </think> to the vocabulary"] if adapter_has_think_tokens(adapter_dir) else [])
    if settings.lora == "merge" or (settings.lora == "auto" and blockers):
        return "merge"
    if blockers:
        raise UserError(f"generation.vllm.lora=request: vLLM cannot load {adapter_dir} as LoRA ({', '.join(blockers)}); "
                        "set generation.vllm.lora=auto to merge it")
    rank = max([config.get("r", 0), *(config.get("rank_pattern") or {}).values()])
    if rank > settings.max_lora_rank:
        raise UserError(f"the adapter's LoRA rank {rank} exceeds generation.vllm.max_lora_rank="
                        f"{settings.max_lora_rank}; raise it, or set generation.vllm.lora=merge")
    return "request"


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
        tokenizer = source.load_tokenizer()
        merged = load_adapter(source.load_model(), adapter_dir, model_name=source.name, tokenizer=tokenizer).merge_and_unload()
        save_pretrained_dir(target, merged, tokenizer)
    return target


def placement(tensor_parallel_size: int, *, launcher: bool) -> tuple[object | None, dict]:
    """Where this process's engine runs: its tensor-parallel group (None alone) and the engine's keyword arguments
    for it. Under data parallelism, vLLM's `external_launcher` on this rank's GPU (LOCAL_RANK); `launcher`: that
    even alone (the engine's model then lives in this process, where GRPO loads weights into it)."""
    distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    rank, world = (torch.distributed.get_rank(), torch.distributed.get_world_size()) if distributed else (0, 1)
    if (world > 1 or launcher) and world % tensor_parallel_size:
        raise UserError(f"generation.vllm.tensor_parallel_size={tensor_parallel_size} must divide the {world} "
                        "data-parallel ranks (trainer.devices x trainer.num_nodes), as each group of that many ranks "
                        "shares one engine")
    if world == 1 and not launcher:
        return None, {}  # vLLM's own workers, tensor parallel across this machine's GPUs
    local_rank = int(os.environ.get("LOCAL_RANK", torch.cuda.current_device() if torch.cuda.is_available() else 0))
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(local_rank), WORLD_SIZE=str(world))
    if "MASTER_PORT" not in os.environ:  # alone: vLLM starts its own process group on a free port
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()))
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")  # a port given alone (some launchers set only it): this machine
    if torch.cuda.is_available():
        if tensor_parallel_size > torch.cuda.device_count():
            raise UserError(f"generation.vllm.tensor_parallel_size={tensor_parallel_size}: a group shares one node, "
                            f"which has {torch.cuda.device_count()} GPUs")
        torch.cuda.set_device(local_rank)
    tp_group = None
    if tensor_parallel_size > 1:  # a collective: every rank builds its engine at the same point
        tp_group, _ = torch.distributed.new_subgroups_by_enumeration(
            [list(range(k, k + tensor_parallel_size)) for k in range(0, world, tensor_parallel_size)])
    # One seed per tensor-parallel group: its workers must sample alike.
    return tp_group, {"distributed_executor_backend": "external_launcher", "seed": rank // tensor_parallel_size}


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def request_seed(seed: int, index: int, n: int) -> int:
    """The seed of prompt `index`'s request of `n` samples: vLLM seeds sample j `request seed + j`, so
    spacing the requests by n gives every sample of every prompt its own stream."""
    return batch_seed(seed, index) * n


class VLLMGenerator:
    """A vLLM engine on `source` (a model source of `lightning_da.models`), with `adapter` applied;
    `model_dir` instead of the source's own directory, `engine_args` added to vLLM's (GRPO's engine)."""

    def __init__(self, source, settings: VLLMSettings, *, adapter: str | Path | None = None, cache_dir: str | Path | None = None,
                 seed: int = 0, model_dir: str | Path | None = None, engine_args: dict | None = None):
        vllm = import_vllm()
        self.vllm, self.settings = vllm, settings
        model_dir, self.lora_request = model_dir or source.local_dir(), None
        if adapter is not None:
            check_adapter_dir(adapter)
            if _adapter_mode(Path(adapter), settings) == "merge":
                model_dir = merged_student(source, adapter, cache_dir)
            else:
                from vllm.lora.request import LoRARequest

                self.lora_request = LoRARequest("adapter", 1, str(adapter))
        self.model_dir = model_dir
        self._eos: list[int] | None = None  # read from the model's files at the first request, not at every one
        self.tp_group, placed = placement(settings.tensor_parallel_size, launcher=bool(engine_args))
        self.llm = vllm.LLM(
            model=str(model_dir), tokenizer=str(model_dir), trust_remote_code=getattr(source, "trust_remote_code", False),
            tensor_parallel_size=settings.tensor_parallel_size, gpu_memory_utilization=settings.gpu_memory_utilization,
            max_model_len=settings.max_model_len, dtype=settings.dtype, enforce_eager=settings.enforce_eager,
            enable_lora=self.lora_request is not None, max_lora_rank=settings.max_lora_rank,
            **{k: getattr(settings, k) for k in ("max_num_seqs", "max_num_batched_tokens") if getattr(settings, k) is not None},
            **{"seed": seed, **placed, **(engine_args or {})},
        )

    def _params(self, sampling: SamplingConfig, *, n: int, seed: int, stop_token_ids: list[int], logprobs: bool):
        common = {"n": n, "max_tokens": sampling.max_new_tokens, "seed": seed, "stop_token_ids": stop_token_ids,
                  "repetition_penalty": sampling.repetition_penalty, "logprobs": 0 if logprobs else None,  # 0: the sampled token's only
                  **({"stop": list(sampling.stop), "include_stop_str_in_output": True} if sampling.stop else {})}
        chosen = {"temperature": 0.0} if not sampling.do_sample else {
            "temperature": sampling.temperature, "top_p": sampling.top_p, "top_k": sampling.top_k or -1,  # -1: no top-k cut
            "min_p": sampling.min_p or 0.0}
        return self.vllm.SamplingParams(**{**chosen, **common, **(sampling.generation_kwargs or {})})  # the kwargs win, as TRL

    def generate_ids(self, prompt_ids: list[list[int]], tokenizer: PreTrainedTokenizerBase, *, n: int,
                     sampling: SamplingConfig, seed: int, progress: bool = True, logprobs: bool = False) -> list[list[Completion]]:
        """`n` completions of each prompt (token ids), prompt i's request seeded `request_seed(seed, i, n)`; each
        ends at its first EOS (kept, as in the `hf` backend) or is `truncated` by `max_new_tokens`. `logprobs`:
        each completion also carries the engine's log-probability of each sampled token (after temperature)."""
        if sampling.do_sample and not sampling.temperature <= MAX_TEMPERATURE:
            raise UserError(f"sampling temperature {sampling.temperature}: vLLM samples at temperatures up to "
                            f"{MAX_TEMPERATURE}; lower it, or use generation.backend=hf")
        if self._eos is None:
            self._eos = _eos_ids(self.model_dir, tokenizer)
        eos = self._eos
        per_request = 1 if not sampling.do_sample else n  # vLLM samples greedily once per request
        requests = [(ids, request_seed(seed, i, n)) for i, ids in enumerate(prompt_ids)]
        mine = slice(0, len(requests))
        if self.tp_group is not None:  # the group's engine takes every member's prompts
            parts = [None] * self.settings.tensor_parallel_size
            torch.distributed.all_gather_object(parts, requests, group=self.tp_group)
            member = torch.distributed.get_rank(group=self.tp_group)
            first = sum(len(part) for part in parts[:member])
            requests, mine = [r for part in parts for r in part], slice(first, first + len(requests))
        params = [self._params(sampling, n=per_request, seed=s, stop_token_ids=eos, logprobs=logprobs) for _, s in requests]
        outputs = self.llm.generate([{"prompt_token_ids": ids} for ids, _ in requests], params,
                                    lora_request=self.lora_request, use_tqdm=progress)[mine]
        rows = [[_completion(o, logprobs) for o in out.outputs] for out in outputs]
        return [[replace(row[0]) for _ in range(n)] if per_request == 1 else row for row in rows]

    def sample_completions(self, tokenizer: PreTrainedTokenizerBase, prompts: list[str], *, n: int,
                           sampling: SamplingConfig, seed: int = 0, progress: bool = True, **_) -> list[list[Completion]]:
        """Best-of-N candidates after each prompt's shared prefix, as `generation.sample_completions`."""
        return self.generate_ids([prefix_ids(tokenizer, p) for p in prompts], tokenizer, n=n, sampling=sampling,
                                 seed=seed, progress=progress)

    def sample_chats(self, tokenizer: PreTrainedTokenizerBase, chats: list[list[dict]], sampling: SamplingConfig, *,
                     num_return_sequences: int = 1, seed: int = 0, continuation: str = "") -> list[str]:
        """Completions of each chat, grouped by chat, special tokens removed: as `generation.sample_chats`."""
        texts, special = chat_texts(tokenizer, chats, continuation)
        # No chats: a tensor-parallel member joining its group's call with nothing of its own.
        ids = tokenizer(texts, add_special_tokens=special)["input_ids"] if texts else []
        completions = self.generate_ids(ids, tokenizer, n=num_return_sequences, sampling=sampling, seed=seed)
        return [continuation + t for t in tokenizer.batch_decode([c.ids for row in completions for c in row], skip_special_tokens=True)]


def _completion(output, logprobs: bool) -> Completion:
    """A vLLM `CompletionOutput` as a `Completion`; with `logprobs`, each sampled token's (vLLM gives one dict per
    position, keyed by token id, holding the sampled token)."""
    ids = list(output.token_ids)
    completion = Completion(ids, output.finish_reason == "length")
    if logprobs:
        completion.logprobs = [position[token].logprob for position, token in zip(output.logprobs, ids, strict=True)]
    return completion


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

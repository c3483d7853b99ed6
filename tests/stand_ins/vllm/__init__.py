"""A stand-in for vLLM, which cannot be installed on CPU machines: `LLM`, `SamplingParams` and the
outputs with vLLM 0.33's call signature and behaviour as lightning_da uses them, sampling with Hugging
Face `generate` on CPU. Put `tests/stand_ins` on the path to use it.

It is as strict as vLLM where the glue could go wrong (each checked against vLLM's source):
- `LLM`: an unknown keyword argument is a TypeError (vLLM hands them to `EngineArgs`); `max_lora_rank`
  one of vLLM's choices; `max_model_len` -1 or None for the model's context; `external_launcher` reads
  RANK, LOCAL_RANK, MASTER_ADDR and MASTER_PORT from the environment, runs the model in this process
  (`llm_engine.model_executor.driver_worker.model_runner.model`, there only) and, as vLLM agrees on the KV cache's
  size, joins an all-reduce over every rank of the world when it is built;
- `LLM`: `logprobs_mode`, `dtype` and `distributed_executor_backend` among vLLM's literals; built in this
  process (`external_launcher`), it seeds Python's, NumPy's and torch's global generators with its seed, as
  vLLM's worker does; sampling leaves the global generator alone (vLLM's per-request generators);
- `SamplingParams`: vLLM's range checks (temperature in [0, 2], top_p in (0, 1], top_k >= -1 and an integer,
  integer stop_token_ids, repetition_penalty > 0, min_p in [0, 1], max_tokens >= 1, n >= 1) and "n must be 1
  when using greedy sampling"; an unknown keyword is a TypeError;
- requests: prompts as `{"prompt_token_ids": ...}`, a prompt longer than `max_model_len` refused, sample j
  of a request seeded `seed + j` (vLLM's child requests), stop at `stop_token_ids` (kept in `token_ids`),
  `finish_reason` "stop" or "length", `top_k=-1` for no cut, `logprobs=0`: each position's sampled token
  with its log-probability (`logprobs_mode`: raw logits, or processed: after temperature and top-k/p);
- LoRA: a request only with `enable_lora=True`, and no adapter vLLM refuses (modules_to_save, DoRA, bias);
- an empty prompt refused ("The decoder prompt cannot be empty");
- `load_weights`: Hugging Face names; an unknown one is an error, a shape that differs from the parameter's
  too (vLLM's `default_weight_loader`); `lm_head.weight` of a model with tied embeddings is skipped after the
  embeddings it aliases, and refused without them; `sleep(level)` / `wake_up(tags)`: level 1 keeps the weights, level 2
  discards them (NaN here) until loaded again; loading while the weights sleep (before `wake_up` with
  "weights") and generating asleep are errors.
Every engine, request, load and sleep is appended to the JSON-lines file named by `$VLLM_STAND_IN_LOG`.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

__version__ = "0.0.0+stand-in"

ENGINE_ARGS = {"max_model_len", "enable_lora", "max_lora_rank", "enable_sleep_mode", "distributed_executor_backend",
               "logprobs_mode", "max_num_seqs", "max_num_batched_tokens", "disable_log_stats"}
LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
LOGPROBS_MODES = ("raw_logprobs", "raw_logits", "processed_logprobs", "processed_logits")  # vLLM's LogprobsMode
DTYPES = ("auto", "half", "float16", "bfloat16", "float", "float32")  # vLLM's ModelDType
EXECUTOR_BACKENDS = (None, "ray", "mp", "uni", "external_launcher")  # vLLM's DistributedExecutorBackend


def _record(event: dict) -> None:
    path = os.environ.get("VLLM_STAND_IN_LOG")
    if path:
        with open(path, "a") as f:
            f.write(json.dumps(event) + "\n")


@dataclass
class SamplingParams:
    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    max_tokens: int | None = 16
    seed: int | None = None
    stop_token_ids: list[int] | None = None
    repetition_penalty: float = 1.0
    min_p: float = 0.0
    logprobs: int | None = None
    stop: list[str] | None = None
    include_stop_str_in_output: bool = False

    def __post_init__(self):
        if not isinstance(self.top_k, int) or isinstance(self.top_k, bool):
            raise TypeError(f"top_k must be an integer, got {type(self.top_k).__name__}")
        if self.stop_token_ids is not None and not all(isinstance(t, int) and not isinstance(t, bool) for t in self.stop_token_ids):
            raise TypeError(f"stop_token_ids must be a list of integers, got {self.stop_token_ids!r}")
        if self.n < 1:
            raise ValueError(f"n must be at least 1, got {self.n}.")
        if not 0.0 <= self.temperature <= 2.0:
            raise ValueError(f"temperature must be in [0, 2], got {self.temperature}.")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}.")
        if self.top_k < -1:
            raise ValueError(f"top_k must be 0 (disable), or at least 1, got {self.top_k}.")
        if not 0.0 <= self.min_p <= 1.0:
            raise ValueError(f"min_p must be in [0, 1], got {self.min_p}.")
        if not self.repetition_penalty > 0.0:
            raise ValueError(f"repetition_penalty must be greater than zero, got {self.repetition_penalty}.")
        if self.max_tokens is not None and self.max_tokens < 1:
            raise ValueError(f"max_tokens must be at least 1, got {self.max_tokens}.")
        if self.logprobs is not None and self.logprobs < 0:
            raise ValueError(f"logprobs must be non-negative, got {self.logprobs}.")
        if self.temperature < 1e-5 and self.n > 1:
            raise ValueError(f"n must be 1 when using greedy sampling, got {self.n}.")


@dataclass
class Logprob:
    logprob: float
    rank: int | None = None
    decoded_token: str | None = None


@dataclass
class CompletionOutput:
    index: int
    text: str
    token_ids: list[int]
    finish_reason: str
    logprobs: list[dict[int, Logprob]] | None = None


@dataclass
class RequestOutput:
    request_id: str
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput] = field(default_factory=list)


class _Model:
    """The engine's model as GRPO reaches it (`...model_runner.model`): vLLM's `load_weights`."""

    def __init__(self, llm: LLM):
        self.llm = llm

    def load_weights(self, weights) -> set[str]:
        if self.llm.weights_released:  # vLLM: the weights' memory is unmapped while they sleep
            raise RuntimeError("load_weights while the engine's weights sleep: wake_up(tags=['weights']) first")
        params = dict(self.llm.model.named_parameters())
        tied = self.llm.model.config.tie_word_embeddings
        loaded = set()
        for name, tensor in weights:
            if tied and name.startswith("lm_head."):
                # vLLM's AutoWeightsLoader skips a weight whose parameter aliases one already loaded (the tied input
                # embeddings); a tied head that comes without them has nothing to alias, and is refused
                if "model.embed_tokens.weight" not in loaded:
                    raise ValueError(f"{name!r} is tied to the input embeddings, which this load did not carry first: "
                                     "send model.embed_tokens.weight (or untie the model)")
                continue
            if name not in params:
                raise ValueError(f"There is no module or parameter named {name!r} in {type(self.llm.model).__name__}")
            if tuple(params[name].shape) != tuple(tensor.shape):  # vLLM's default_weight_loader
                raise AssertionError(f"Attempted to load weight ({tensor.size()}) into parameter ({params[name].size()})")
            with torch.no_grad():
                params[name].copy_(tensor.to(params[name].device))
            loaded.add(name)
        self.llm.weights_asleep = False
        digest = hashlib.sha256()
        for name in sorted(loaded):
            digest.update(params[name].detach().numpy().tobytes())
        _record({"event": "load_weights", "names": sorted(loaded), "rank": os.environ.get("RANK"), "digest": digest.hexdigest()})
        return loaded


class _Executor:
    def __init__(self, llm: LLM):
        self.driver_worker = type("Worker", (), {"model_runner": type("Runner", (), {"model": _Model(llm)})()})()


class LLM:
    def __init__(self, model: str, *, tokenizer: str | None = None, trust_remote_code: bool = False,
                 tensor_parallel_size: int = 1, dtype: str = "auto", seed: int = 0, gpu_memory_utilization: float = 0.92,
                 enforce_eager: bool = False, **kwargs):
        unknown = sorted(set(kwargs) - ENGINE_ARGS)
        if unknown:
            raise TypeError(f"EngineArgs.__init__() got an unexpected keyword argument '{unknown[0]}'")
        self.enable_lora = kwargs.get("enable_lora", False)
        self.max_lora_rank = kwargs.get("max_lora_rank", 16)
        if self.max_lora_rank not in LORA_RANKS:
            raise ValueError(f"max_lora_rank {self.max_lora_rank} is not one of {LORA_RANKS}")
        self.enable_sleep_mode = kwargs.get("enable_sleep_mode", False)
        self.logprobs_mode = kwargs.get("logprobs_mode", "raw_logprobs")
        backend = kwargs.get("distributed_executor_backend")
        for key, value, allowed in (("logprobs_mode", self.logprobs_mode, LOGPROBS_MODES), ("dtype", dtype, DTYPES),
                                    ("distributed_executor_backend", backend, EXECUTOR_BACKENDS)):
            if value not in allowed:
                raise ValueError(f"Invalid {key} {value!r}: choose one of {allowed}")
        placement = {}
        if backend == "external_launcher":
            placement = {"rank": int(os.environ["RANK"]), "local_rank": int(os.environ["LOCAL_RANK"]),
                         "master": f"{os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']}"}
        self.model = AutoModelForCausalLM.from_pretrained(model, trust_remote_code=trust_remote_code).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(tokenizer or model)
        max_model_len = kwargs.get("max_model_len")
        context = self.model.config.max_position_embeddings
        if max_model_len is not None and max_model_len != -1 and max_model_len > context:
            raise ValueError(f"User-specified max_model_len ({max_model_len}) is greater than the derived max_model_len ({context}).")
        self.max_model_len = context if max_model_len in (None, -1) else max_model_len
        self._adapters: dict[str, torch.nn.Module] = {}
        self.weights_asleep, self.cache_asleep, self.weights_released = False, False, False
        if backend == "external_launcher":  # the engine core in this process (vLLM: no V1 multiprocessing)
            # vLLM's worker seeds every global generator with the engine's seed (set_random_seed), here in this process
            random.seed(seed)
            np.random.seed(seed)
            torch.manual_seed(seed)
            self.llm_engine = type("LLMEngine", (), {"model_executor": _Executor(self)})()
            # vLLM's ExecutorWithExternalLauncher.determine_available_memory: the minimum over every rank of the
            # world, an all-reduce each engine's build joins (a rank that builds none leaves the others waiting).
            import torch.distributed as dist

            if dist.is_available() and dist.is_initialized():
                dist.all_reduce(torch.tensor([1 << 30]), op=dist.ReduceOp.MIN)
        _record({"event": "engine", "model": str(model), "tensor_parallel_size": tensor_parallel_size,
                 "gpu_memory_utilization": gpu_memory_utilization, "max_model_len": max_model_len, "dtype": dtype,
                 "enable_lora": self.enable_lora, "max_lora_rank": self.max_lora_rank, "trust_remote_code": trust_remote_code,
                 "seed": seed, "backend": backend, **placement, "enable_sleep_mode": self.enable_sleep_mode,
                 "logprobs_mode": self.logprobs_mode, "max_num_seqs": kwargs.get("max_num_seqs"),
                 "max_num_batched_tokens": kwargs.get("max_num_batched_tokens")})

    def sleep(self, level: int = 1) -> None:
        if not self.enable_sleep_mode:
            raise ValueError("Sleep mode is not enabled. Enable it with `enable_sleep_mode=True`.")
        if level == 2:
            with torch.no_grad():
                for param in self.model.parameters():
                    param.fill_(math.nan)  # discarded: what a woken engine holds until weights are loaded
            self.weights_asleep = True
        self.cache_asleep, self.weights_released = True, True
        _record({"event": "sleep", "level": level})

    def wake_up(self, tags: list[str] | None = None) -> bool:
        tags = tags or ["weights", "kv_cache"]
        if "kv_cache" in tags:
            self.cache_asleep = False
        if "weights" in tags:
            self.weights_released = False
        _record({"event": "wake_up", "tags": tags})
        return not self.cache_asleep

    def reset_prefix_cache(self) -> bool:
        _record({"event": "reset_prefix_cache"})
        return True

    def _with_lora(self, lora_request):
        if lora_request is None:
            return self.model
        if not self.enable_lora:
            raise ValueError("LoRA is not enabled! Set `enable_lora=True`")
        config = json.loads((Path(lora_request.lora_path) / "adapter_config.json").read_text())
        if config.get("modules_to_save"):
            raise ValueError("vLLM only supports modules_to_save being either None or ['classifier', 'score'].")
        if config.get("use_dora") or config.get("lora_bias") or config.get("bias", "none") != "none":
            raise ValueError("vLLM does not yet support DoRA. vLLM does not support LoRA bias (lora_bias).")
        if config["r"] > self.max_lora_rank:
            raise ValueError(f"LoRA rank {config['r']} is greater than max_lora_rank {self.max_lora_rank}.")
        if lora_request.lora_path not in self._adapters:
            from peft import PeftModel

            self._adapters[lora_request.lora_path] = PeftModel.from_pretrained(self.model, lora_request.lora_path).eval()
        return self._adapters[lora_request.lora_path]

    @torch.no_grad()
    def generate(self, prompts, sampling_params=None, *, use_tqdm: bool = True, lora_request=None) -> list[RequestOutput]:
        if self.cache_asleep or self.weights_asleep:
            raise RuntimeError("the engine is asleep (weights or KV cache); wake_up() and load the weights first")
        prompts = prompts if isinstance(prompts, list) else [prompts]
        params = sampling_params if isinstance(sampling_params, list) else [sampling_params or SamplingParams()] * len(prompts)
        model = self._with_lora(lora_request)
        outputs = []
        for index, (prompt, p) in enumerate(zip(prompts, params, strict=True)):
            ids = list(prompt["prompt_token_ids"])
            if not ids:
                raise ValueError("The decoder prompt cannot be empty")
            if len(ids) >= self.max_model_len:
                raise ValueError(f"The decoder prompt (length {len(ids)}) is longer than the maximum model length of "
                                 f"{self.max_model_len}.")
            _record({"event": "request", "prompt_token_ids": ids, "seed": p.seed, "n": p.n, "temperature": p.temperature,
                     "top_p": p.top_p, "top_k": p.top_k, "min_p": p.min_p, "repetition_penalty": p.repetition_penalty,
                     "max_tokens": p.max_tokens, "stop_token_ids": p.stop_token_ids,
                     "logprobs": p.logprobs, "stop": p.stop, "lora_path": getattr(lora_request, "lora_path", None), "rank": os.environ.get("RANK")})
            request = RequestOutput(str(index), ids)
            for k in range(p.n):
                with torch.random.fork_rng(devices=[]):  # vLLM samples with per-request generators: the global one untouched
                    if p.seed is not None:
                        torch.manual_seed(p.seed + k)  # vLLM's child request k
                    request.outputs.append(self._sample(model, ids, p, k))
            outputs.append(request)
        return outputs

    def _sample(self, model, ids: list[int], p: SamplingParams, index: int) -> CompletionOutput:
        stop = set(p.stop_token_ids or []) | {self.tokenizer.eos_token_id}
        sampled = p.temperature > 0
        settings = {"do_sample": True, "temperature": p.temperature, "top_p": p.top_p,
                    "top_k": p.top_k if p.top_k > 0 else 0, **({"min_p": p.min_p} if p.min_p else {})} if sampled else {"do_sample": False}
        max_tokens = min(p.max_tokens, self.max_model_len - len(ids))
        out = model.generate(input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                             max_new_tokens=max_tokens, eos_token_id=sorted(stop), pad_token_id=self.tokenizer.pad_token_id or 0,
                             repetition_penalty=p.repetition_penalty, return_dict_in_generate=True, output_scores=True,
                             output_logits=True, **settings)
        row = out.sequences[0, len(ids):].tolist()
        end = next((i for i, token in enumerate(row) if token in stop), None)
        # vLLM's stop strings: the output ends with the token that completes one (its text cut there, or after it
        # with include_stop_str_in_output; callers here decode the ids)
        text_end = next((i for i in range(len(row)) if any(s in self.tokenizer.decode(row[: i + 1]) for s in p.stop or [])), None)
        if text_end is not None and (end is None or text_end < end):
            end = text_end
        row = row if end is None else row[: end + 1]
        logprobs = None
        if p.logprobs is not None:
            steps = out.scores if self.logprobs_mode.startswith("processed") else out.logits
            logprobs = [{token: Logprob(float(torch.log_softmax(step[0].float(), -1)[token]), 1)}
                        for step, token in zip(steps, row, strict=False)]
        return CompletionOutput(index, self.tokenizer.decode(row, skip_special_tokens=True), row,
                                "length" if end is None else "stop", logprobs)

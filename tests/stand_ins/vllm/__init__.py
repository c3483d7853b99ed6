"""A stand-in for vLLM, which cannot be installed on CPU machines: `LLM`, `SamplingParams` and the
outputs with vLLM's call signature and behaviour as lightning_da uses them, sampling with Hugging
Face `generate` on CPU. Put `tests/stand_ins` on the path to use it.

It behaves as vLLM does where the glue could go wrong: prompts as `{"prompt_token_ids": ...}`, one
seed per request, `n` samples each, stop at `stop_token_ids` (kept in `token_ids`), `finish_reason`
"stop" or "length", `top_k=-1` for no cut, a LoRA request only with `enable_lora=True`, and no
adapter with `modules_to_save` ("vLLM only supports modules_to_save being None"). Every engine and
request is appended to the JSON-lines file named by `$VLLM_STAND_IN_LOG`, for tests to read.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

__version__ = "0.0.0+stand-in"


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
    top_k: int = -1
    max_tokens: int | None = 16
    seed: int | None = None
    stop_token_ids: list[int] | None = None
    repetition_penalty: float = 1.0


@dataclass
class CompletionOutput:
    index: int
    text: str
    token_ids: list[int]
    finish_reason: str


@dataclass
class RequestOutput:
    request_id: str
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput] = field(default_factory=list)


class LLM:
    def __init__(self, model: str, tokenizer: str | None = None, *, trust_remote_code: bool = False,
                 tensor_parallel_size: int = 1, gpu_memory_utilization: float = 0.9, max_model_len: int | None = None,
                 dtype: str = "auto", enforce_eager: bool = False, enable_lora: bool = False, max_lora_rank: int = 16,
                 seed: int = 0, **kwargs):
        _record({"event": "engine", "model": str(model), "tensor_parallel_size": tensor_parallel_size,
                 "gpu_memory_utilization": gpu_memory_utilization, "max_model_len": max_model_len, "dtype": dtype,
                 "enable_lora": enable_lora, "max_lora_rank": max_lora_rank, "trust_remote_code": trust_remote_code})
        self.model = AutoModelForCausalLM.from_pretrained(model, trust_remote_code=trust_remote_code).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(tokenizer or model)
        self.enable_lora = enable_lora
        self.max_lora_rank = max_lora_rank
        self.max_model_len = max_model_len
        self._adapters: dict[str, torch.nn.Module] = {}

    def _with_lora(self, lora_request):
        if lora_request is None:
            return self.model
        if not self.enable_lora:
            raise ValueError("LoRA is not enabled! Set `enable_lora=True`")
        config = json.loads((Path(lora_request.lora_path) / "adapter_config.json").read_text())
        if config.get("modules_to_save"):
            raise ValueError("vLLM only supports modules_to_save being None.")
        if config["r"] > self.max_lora_rank:
            raise ValueError(f"LoRA rank {config['r']} is greater than max_lora_rank {self.max_lora_rank}.")
        if lora_request.lora_path not in self._adapters:
            from peft import PeftModel

            self._adapters[lora_request.lora_path] = PeftModel.from_pretrained(self.model, lora_request.lora_path).eval()
        return self._adapters[lora_request.lora_path]

    @torch.no_grad()
    def generate(self, prompts, sampling_params=None, *, use_tqdm: bool = True, lora_request=None) -> list[RequestOutput]:
        prompts = prompts if isinstance(prompts, list) else [prompts]
        params = sampling_params if isinstance(sampling_params, list) else [sampling_params or SamplingParams()] * len(prompts)
        model = self._with_lora(lora_request)
        outputs = []
        for index, (prompt, p) in enumerate(zip(prompts, params, strict=True)):
            ids = list(prompt["prompt_token_ids"])
            _record({"event": "request", "prompt_token_ids": ids, "seed": p.seed, "n": p.n, "temperature": p.temperature,
                     "top_p": p.top_p, "top_k": p.top_k, "max_tokens": p.max_tokens, "stop_token_ids": p.stop_token_ids,
                     "lora_path": getattr(lora_request, "lora_path", None)})
            stop = set(p.stop_token_ids or []) | {self.tokenizer.eos_token_id}
            if p.seed is not None:
                torch.manual_seed(p.seed)
            sampled = p.temperature > 0
            settings = {"do_sample": True, "temperature": p.temperature, "top_p": p.top_p,
                        "top_k": p.top_k if p.top_k > 0 else 0} if sampled else {"do_sample": False}
            generated = model.generate(input_ids=torch.tensor([ids]).repeat(p.n, 1), attention_mask=torch.ones(p.n, len(ids), dtype=torch.long),
                                       max_new_tokens=p.max_tokens, eos_token_id=sorted(stop), pad_token_id=self.tokenizer.pad_token_id or 0,
                                       repetition_penalty=p.repetition_penalty, **settings)[:, len(ids):]
            request = RequestOutput(str(index), ids)
            for k, row in enumerate(generated.tolist()):
                end = next((i for i, token in enumerate(row) if token in stop), None)
                row = row if end is None else row[: end + 1]
                request.outputs.append(CompletionOutput(k, self.tokenizer.decode(row, skip_special_tokens=True), row,
                                                        "length" if end is None else "stop"))
            outputs.append(request)
        return outputs

"""A judge that is a causal LM: format (prompt, response), decode greedily, parse the verdict."""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from tqdm.auto import tqdm

from lightning_da.errors import UserError
from lightning_da.generation.sampling import SamplingConfig
from lightning_da.judges.base import Verdict
from lightning_da.models.loading import HubModel

BACKENDS = ("hf", "vllm")


class GenerativeJudge(ABC):
    """Subclasses say how to `format` one exchange and how to `parse` the model's answer.

    `backend`: `hf` (Hugging Face `generate`, `batch_size` exchanges at a time) or `vllm` (a vLLM engine with the
    `vllm` settings, `generation.vllm`'s by default: every exchange of a call at once; one engine per rank, so
    `tensor_parallel_size` 1 under several ranks). Both decode greedily and stop at the model's end of turn."""

    name = "generative"
    measures = "ASR"

    def __init__(self, model: HubModel, batch_size: int = 8, max_new_tokens: int = 32, backend: str = "hf", vllm=None):
        if backend not in BACKENDS:
            raise UserError(f"judge.backend={backend!r}: set one of {', '.join(BACKENDS)}")
        self.model = model
        self.batch_size = batch_size
        self.max_new_tokens = max_new_tokens
        self.backend, self.vllm = backend, vllm
        self._loaded = None

    def identity(self) -> dict:
        # An engine's numerics may differ from Hugging Face's: its verdicts are cached apart; hf keys stay as they were.
        return {"judge": self.name, "model": self.model.identity(), **({"backend": self.backend} if self.backend != "hf" else {})}

    def check(self) -> None:
        """The judge's weights are reachable (a local copy, or the hub allowed), before any long work."""
        self.model.local_dir()

    @abstractmethod
    def format(self, tokenizer, prompt: str, response: str) -> str:
        """The judge's input text for one exchange, special tokens included."""

    @abstractmethod
    def parse(self, text: str) -> Verdict:
        """The verdict in the judge's generated text; `unparsable` when it says neither."""

    def loaded(self):
        """(model or vLLM engine, tokenizer), loaded on first use and kept."""
        if self._loaded is None:
            tokenizer = self.model.load_tokenizer()
            if self.backend == "vllm":
                from lightning_da.generation import VLLMGenerator

                if self.vllm is None:
                    raise UserError("judge.backend=vllm needs the engine's settings: set judge.vllm (generation.vllm's by default)")
                distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
                if distributed and torch.distributed.get_world_size() > 1 and self.vllm.tensor_parallel_size > 1:
                    raise UserError("judge.backend=vllm under several ranks judges with one engine per rank: set "
                                    "judge.vllm.tensor_parallel_size=1 (or judge.backend=hf)")
                self._loaded = (VLLMGenerator(self.model, self.vllm, cache_dir=None), tokenizer)
                return self._loaded
            model = self.model.load_model().eval()
            if getattr(self.model, "device_map", None) is None and torch.cuda.is_available():  # any model source
                model = model.cuda()
            self._loaded = (model, tokenizer)
        return self._loaded

    def _judge_vllm(self, engine, tokenizer, prompts: list[str], responses: list[str]) -> list[Verdict]:
        texts = [self.format(tokenizer, p, r) for p, r in zip(prompts, responses, strict=True)]
        ids = tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []
        greedy = SamplingConfig(do_sample=False, max_new_tokens=self.max_new_tokens)
        completions = engine.generate_ids(ids, tokenizer, n=1, sampling=greedy, seed=0, progress=False)
        return [self.parse(text) for text in tokenizer.batch_decode([row[0].ids for row in completions], skip_special_tokens=True)]

    @torch.inference_mode()
    def judge(self, prompts: list[str], responses: list[str]) -> list[Verdict]:
        model, tokenizer = self.loaded()
        if self.backend == "vllm":
            return self._judge_vllm(model, tokenizer, prompts, responses)
        verdicts: list[Verdict] = []
        previous, tokenizer.padding_side = tokenizer.padding_side, "left"
        try:
            for start in tqdm(range(0, len(prompts), self.batch_size), desc=f"judge ({self.name})", unit="batch", leave=False):
                end = start + self.batch_size
                texts = [self.format(tokenizer, p, r) for p, r in zip(prompts[start:end], responses[start:end], strict=True)]
                # The formatted text carries its own special tokens (BOS, headers).
                encoded = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
                output = model.generate(
                    **encoded, do_sample=False, max_new_tokens=self.max_new_tokens, pad_token_id=tokenizer.pad_token_id
                )
                decoded = tokenizer.batch_decode(output[:, encoded["input_ids"].shape[1]:], skip_special_tokens=True)
                verdicts.extend(self.parse(text) for text in decoded)
        finally:
            tokenizer.padding_side = previous
        return verdicts

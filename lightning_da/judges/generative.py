"""A judge that is a causal LM: format (prompt, response), decode greedily, parse the verdict."""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from tqdm.auto import tqdm

from lightning_da.judges.base import Verdict
from lightning_da.models.loading import HubModel


class GenerativeJudge(ABC):
    """Subclasses say how to `format` one exchange and how to `parse` the model's answer."""

    name = "generative"

    def __init__(self, model: HubModel, batch_size: int = 8, max_new_tokens: int = 32):
        self.model = model
        self.batch_size = batch_size
        self.max_new_tokens = max_new_tokens
        self._loaded = None

    def identity(self) -> dict:
        return {"judge": self.name, "model": self.model.identity()}

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
        """(model, tokenizer), loaded on first use and kept."""
        if self._loaded is None:
            tokenizer = self.model.load_tokenizer()
            model = self.model.load_model().eval()
            if self.model.device_map is None and torch.cuda.is_available():
                model = model.cuda()
            self._loaded = (model, tokenizer)
        return self._loaded

    @torch.inference_mode()
    def judge(self, prompts: list[str], responses: list[str]) -> list[Verdict]:
        model, tokenizer = self.loaded()
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

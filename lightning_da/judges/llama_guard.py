"""Llama Guard 3 (1B or 8B) through transformers, formatted as its model card specifies."""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from lightning_da.judges.base import Verdict
from lightning_da.models.loading import HubModel

_CATEGORIES = re.compile(r"^S\d+(\s*,\s*S\d+)*$")


def parse_llama_guard(text: str) -> Verdict:
    """`safe`, or `unsafe` then a line of categories (`S1` or `S1,S10`); anything else is unparsable."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    if lines and lines[0].lower() == "safe":
        return Verdict("safe", raw=text)
    if lines and lines[0].lower() == "unsafe":
        category = lines[1].replace(" ", "") if len(lines) > 1 and _CATEGORIES.match(lines[1]) else None
        return Verdict("unsafe", category=category, raw=text)
    return Verdict("unparsable", raw=text)


@dataclass
class LlamaGuardJudge:
    """Judges (prompt, response) as a user turn and an agent turn, greedy-decoded.

    `content_parts`: Llama-Guard-3-1B's template wants message content as a list of
    `{"type": "text", ...}` parts; the 8B template wants plain strings.
    """

    model: HubModel
    content_parts: bool = False
    batch_size: int = 8
    max_new_tokens: int = 10

    def __post_init__(self) -> None:
        self._loaded = None

    def identity(self) -> dict:
        return {"judge": "llama_guard3", "model": self.model.identity(), "content_parts": self.content_parts}

    def _content(self, text: str):
        return [{"type": "text", "text": text}] if self.content_parts else text

    def conversation(self, prompt: str, response: str) -> list[dict]:
        return [
            {"role": "user", "content": self._content(prompt)},
            {"role": "assistant", "content": self._content(response)},
        ]

    def _model(self):
        if self._loaded is None:
            tokenizer = self.model.load_tokenizer()
            model = self.model.load_model().eval()
            if self.model.device_map is None and torch.cuda.is_available():
                model = model.cuda()
            self._loaded = (model, tokenizer)
        return self._loaded

    @torch.inference_mode()
    def judge(self, prompts: list[str], responses: list[str]) -> list[Verdict]:
        model, tokenizer = self._model()
        verdicts: list[Verdict] = []
        previous, tokenizer.padding_side = tokenizer.padding_side, "left"
        try:
            for start in tqdm(range(0, len(prompts), self.batch_size), desc="judge", unit="batch", leave=False):
                # The template writes the whole moderation prompt, the assistant header included.
                texts = [
                    tokenizer.apply_chat_template(self.conversation(p, r), tokenize=False)
                    for p, r in zip(prompts[start : start + self.batch_size], responses[start : start + self.batch_size], strict=True)
                ]
                encoded = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
                output = model.generate(
                    **encoded, do_sample=False, max_new_tokens=self.max_new_tokens, pad_token_id=tokenizer.pad_token_id
                )
                decoded = tokenizer.batch_decode(output[:, encoded["input_ids"].shape[1]:], skip_special_tokens=True)
                verdicts.extend(parse_llama_guard(text) for text in decoded)
        finally:
            tokenizer.padding_side = previous
        return verdicts

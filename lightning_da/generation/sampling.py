"""Batched sampling from a causal LM with the Hugging Face backend."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from lightning_da.errors import UserError, check_at_least


@dataclass
class SamplingConfig:
    """Sampling settings; `top_k: null` means no top-k cut (Hugging Face's default is 50)."""

    temperature: float = 0.7
    top_p: float = 1.0
    top_k: int | None = None
    max_new_tokens: int = 2048
    do_sample: bool = True

    def __post_init__(self) -> None:
        check_at_least(self.max_new_tokens, "max_new_tokens (sampling)")
        if self.do_sample and not self.temperature > 0:
            raise UserError(f"sampling temperature={self.temperature}: set it above 0, or do_sample=false for greedy decoding")

    def as_dict(self) -> dict:
        return asdict(self)

    def generate_kwargs(self) -> dict:
        if not self.do_sample:
            return {"do_sample": False, "max_new_tokens": self.max_new_tokens}
        return {
            "do_sample": True,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "top_k": self.top_k or 0,  # 0 disables top-k in transformers
            "max_new_tokens": self.max_new_tokens,
            "repetition_penalty": 1.0,  # override model defaults (Qwen ships 1.05): the paper samples plainly
        }


def encode_chats(tokenizer: PreTrainedTokenizerBase, chats: list[list[dict]]) -> dict:
    """Left-padded input ids of each chat with the assistant turn opened."""
    texts = [tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True) for chat in chats]
    # The template already holds BOS where the model wants it.
    previous, tokenizer.padding_side = tokenizer.padding_side, "left"
    try:
        return tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    finally:
        tokenizer.padding_side = previous


@torch.inference_mode()
def sample_chats(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    chats: list[list[dict]],
    sampling: SamplingConfig,
    *,
    num_return_sequences: int = 1,
    seed: int | None = None,
) -> list[str]:
    """Completions of each chat (`num_return_sequences` per chat, grouped by chat), special tokens removed."""
    encoded = encode_chats(tokenizer, chats).to(model.device)
    if seed is not None:
        torch.manual_seed(seed)
    output = model.generate(
        **encoded,
        **sampling.generate_kwargs(),
        num_return_sequences=num_return_sequences,
        pad_token_id=tokenizer.pad_token_id,
    )
    new_tokens = output[:, encoded["input_ids"].shape[1]:]
    return tokenizer.batch_decode(new_tokens, skip_special_tokens=True)

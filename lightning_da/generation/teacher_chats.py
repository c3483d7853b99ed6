"""The teacher's sampling: whole chats (the spec in the system turn, demonstrations, the prompt) through
the chat template, with the Hugging Face backend. Candidates and rollouts start from the student's
shared prefix instead (`generation.completions`)."""

from __future__ import annotations

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from lightning_da.generation.sampling import SamplingConfig


def encode_chats(tokenizer: PreTrainedTokenizerBase, chats: list[list[dict]], continuation: str = "") -> dict:
    """Left-padded input ids of each chat with the assistant turn opened (and begun with `continuation`)."""
    texts = [tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True) + continuation for chat in chats]
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
    continuation: str = "",
) -> list[str]:
    """Completions of each chat (`num_return_sequences` per chat, grouped by chat), special tokens removed;
    with `continuation`, the assistant's answer starts with it (and so does each completion returned)."""
    encoded = encode_chats(tokenizer, chats, continuation).to(model.device)
    if seed is not None:
        torch.manual_seed(seed)
    output = model.generate(
        **encoded,
        **sampling.generate_kwargs(),
        num_return_sequences=num_return_sequences,
        pad_token_id=tokenizer.pad_token_id,
    )
    new_tokens = output[:, encoded["input_ids"].shape[1]:]
    return [continuation + text for text in tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]

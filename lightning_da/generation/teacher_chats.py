"""The teacher's sampling: whole chats (the spec in the system turn, demonstrations, the prompt) through
the chat template, with the Hugging Face backend. Candidates and rollouts start from the student's
shared prefix instead (`generation.completions`)."""

from __future__ import annotations

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from lightning_da.generation.sampling import SamplingConfig


def chat_texts(tokenizer: PreTrainedTokenizerBase, chats: list[list[dict] | str], continuation: str = "") -> tuple[list[str], bool]:
    """(each chat's text with the assistant turn opened and begun with `continuation`, whether the tokenizer should add
    its special tokens). A chat given as a string is sent as it is, with the tokenizer's BOS (the reference's raw
    prompts); all chats of a batch are one kind."""
    if all(isinstance(chat, str) for chat in chats):
        return [chat + continuation for chat in chats], True
    # The template already holds BOS where the model wants it.
    return [tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True) + continuation for chat in chats], False


def encode_chats(tokenizer: PreTrainedTokenizerBase, chats: list[list[dict] | str], continuation: str = "") -> dict:
    """Left-padded input ids of each chat with the assistant turn opened (and begun with `continuation`)."""
    texts, special = chat_texts(tokenizer, chats, continuation)
    previous, tokenizer.padding_side = tokenizer.padding_side, "left"
    try:
        return tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=special)
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
        tokenizer=tokenizer,  # read by `stop` strings only
    )
    new_tokens = output[:, encoded["input_ids"].shape[1]:]
    return [continuation + text for text in tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]

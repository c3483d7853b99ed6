"""The `<think>` and `</think>` special tokens the reference adds when a DeepSeek teacher's traces train a non-DeepSeek
student (PAPER.md 9): added to the tokenizer and the embeddings resized to match for SFT, and added again, from the
adapter's saved tokenizer, wherever that adapter is loaded."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from lightning_da.errors import UserError

THINK_TOKENS = ("<think>", "</think>")


def wants_think_tokens(setting, teacher: str, student: str, key: str = "algorithm.think_tokens") -> bool:
    """`auto`: a DeepSeek teacher (by its name) and a student that is not one, as the reference decides; or true/false."""
    if setting == "auto":
        return "deepseek" in teacher.lower() and "deepseek" not in student.lower()
    if isinstance(setting, bool):
        return setting
    raise UserError(f"{key}={setting}: use auto (a DeepSeek teacher's traces on another student), true or false")


def has_think_tokens(tokenizer: PreTrainedTokenizerBase) -> bool:
    return set(THINK_TOKENS) <= set(tokenizer.all_special_tokens)


def add_think_tokens(tokenizer: PreTrainedTokenizerBase) -> bool:
    """Whether the tokenizer grew (a tokenizer that has both as special tokens already is left as it is)."""
    if has_think_tokens(tokenizer):
        return False
    tokenizer.add_special_tokens({"extra_special_tokens": list(THINK_TOKENS)}, replace_extra_special_tokens=False)
    return True


def resize_embeddings(model: PreTrainedModel, size: int) -> None:
    """The embeddings (and an untied lm_head) resized to `size` rows, as the reference's `resize_token_embeddings`
    (Qwen's padded matrix shrinks to the tokenizer); a row it adds is the mean of the old ones, not a random draw, so
    that every later load of the adapter's base builds the same rows."""
    old = model.get_input_embeddings().weight.shape[0]
    if old == size:
        return
    model.resize_token_embeddings(size, mean_resizing=False)
    if size > old:
        with torch.no_grad():
            weights = {id(w): w for w in (model.get_input_embeddings().weight, model.get_output_embeddings().weight)}
            for weight in weights.values():
                weight[old:] = weight[:old].mean(0)


def adapter_has_think_tokens(adapter_dir: str | Path) -> bool:
    """Whether the tokenizer saved beside an adapter holds both tokens as special ones, as transformers 5 writes it
    (tokenizer.json's added tokens, tokenizer_config's extra special tokens) or 4 (its added_tokens_decoder)."""
    special = set()
    config, backend = Path(adapter_dir) / "tokenizer_config.json", Path(adapter_dir) / "tokenizer.json"
    if config.is_file():
        settings = json.loads(config.read_text())
        special |= set(settings.get("extra_special_tokens") or []) | set(settings.get("additional_special_tokens") or [])
        special |= {t.get("content") for t in (settings.get("added_tokens_decoder") or {}).values() if t.get("special")}
    if backend.is_file():
        special |= {t.get("content") for t in json.loads(backend.read_text()).get("added_tokens") or [] if t.get("special")}
    return set(THINK_TOKENS) <= special


def match_adapter_vocabulary(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase | None, adapter_dir: str | Path) -> None:
    """Before an adapter trained with the think tokens loads: the tokens added to `tokenizer` (the caller's, which
    then tokenises with them) and `model` resized as SFT resized it. A student whose own tokenizer has them as
    special tokens already was not resized."""
    if tokenizer is not None and has_think_tokens(tokenizer) or not adapter_has_think_tokens(adapter_dir):
        return
    if tokenizer is None:
        raise UserError(f"{adapter_dir} was trained with <think> and </think> added to the vocabulary; load it with its tokenizer")
    add_think_tokens(tokenizer)
    resize_embeddings(model, len(tokenizer))

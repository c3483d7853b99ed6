"""The one prompt format shared by SFT, candidate sampling, scoring and GRPO rollouts.

    prefix      chat_template([user: prompt]) with the assistant turn opened, then `<think>`:
                where every candidate and rollout starts, and what SFT masks out of the loss
                but `<think>` (which SFT learns)
    response    the student's text after `<think>`: reasoning, `</think>`, the final answer
    completion  `<think>` + response + EOS: what SFT learns

Each part is tokenised on its own, so the boundary between prefix and response is exact and a
response's ids are the same whether it was learned, sampled or scored.
"""

from __future__ import annotations

import torch
from transformers import PreTrainedTokenizerBase

THINK = "<think>"
THINK_END = "</think>"
IGNORE_INDEX = -100  # label of a token that is not learned


def prompt_ids(tokenizer: PreTrainedTokenizerBase, prompt: str) -> list[int]:
    """The user turn in the chat template with the assistant turn opened (BOS included by the template)."""
    text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def think_ids(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    return tokenizer(THINK, add_special_tokens=False)["input_ids"]


def prefix_ids(tokenizer: PreTrainedTokenizerBase, prompt: str) -> list[int]:
    """Where candidates and rollouts start: the prompt in the chat template, then `<think>`."""
    return prompt_ids(tokenizer, prompt) + think_ids(tokenizer)


def response_ids(tokenizer: PreTrainedTokenizerBase, response: str) -> list[int]:
    return tokenizer(response, add_special_tokens=False)["input_ids"]


def completion_ids(tokenizer: PreTrainedTokenizerBase, response: str, *, eos: bool) -> list[int]:
    """`<think>` + response (+ EOS): the tokens SFT learns after the prompt."""
    ids = think_ids(tokenizer) + response_ids(tokenizer, response)
    return ids + [tokenizer.eos_token_id] if eos else ids


def encode_candidate(tokenizer: PreTrainedTokenizerBase, prompt: str, response: str) -> tuple[list[int], int]:
    """The ids of prefix + response, and where the response starts."""
    head = prefix_ids(tokenizer, prompt)
    return head + response_ids(tokenizer, response), len(head)


def final_answer(response: str) -> str:
    """The answer after the reasoning: the text after the last `</think>`, or all of it."""
    return response.rsplit(THINK_END, 1)[-1].strip()


def pad_ids(rows: list[list[int]], pad: int, *, left: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, attention mask), each (rows, longest row, at least 1): left-padded prompts (generation
    continues them) or right-padded completions."""
    width = max(1, max(len(r) for r in rows))
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        span = slice(width - len(row), width) if left else slice(0, len(row))
        ids[i, span], mask[i, span] = torch.tensor(row, dtype=torch.long), 1
    return ids, mask


def eos_ids(configured: int | list[int] | None, tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """Where sampling stops: the model's generation-config EOS ids (Llama 3 has several) and the tokenizer's."""
    ids = set(configured if isinstance(configured, list) else [configured] if configured is not None else [])
    return sorted(ids | {tokenizer.eos_token_id})

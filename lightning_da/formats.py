"""The one prompt format shared by SFT, candidate sampling, scoring and GRPO rollouts.

    prefix      chat_template([user: prompt]) with the assistant turn opened, then the opening
                (`<think>`): where every candidate and rollout starts, and what SFT masks out of the
                loss but `<think>` (which SFT learns)
    response    the student's text after the opening: reasoning, `</think>`, the final answer
    completion  `<think>` + response + the end of the turn (EOS): what SFT learns

Each part is tokenised on its own, so the boundary between prefix and response is exact and a
response's ids are the same whether it was learned, sampled or scored.

The student's tokenizer carries its format, so every stage that tokenises reads the same one: its chat
template (`prompt_format=chat`, the model's own; `reference`, the authors' per-family template with its
system line, `apply_prompt_format`), `completion_end` (the reference's end of turn, else EOS) and, while
evaluate.py runs a benchmark that sets one, `opening` in place of `<think>` (the reference's GSM8K opens
"A: Let's think step by step.").
"""

from __future__ import annotations

import torch
from transformers import PreTrainedTokenizerBase

from lightning_da.errors import UserError

THINK = "<think>"
THINK_END = "</think>"
IGNORE_INDEX = -100  # label of a token that is not learned


def prompt_ids(tokenizer: PreTrainedTokenizerBase, prompt: str) -> list[int]:
    """The user turn in the chat template with the assistant turn opened (BOS included by the template)."""
    text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def think_ids(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    return tokenizer(THINK, add_special_tokens=False)["input_ids"]


def opening(tokenizer: PreTrainedTokenizerBase) -> str:
    """What opens the assistant turn before the response: `<think>`, or the evaluated benchmark's opening."""
    value = getattr(tokenizer, "opening", None)
    return THINK if value is None else value


def prefix_ids(tokenizer: PreTrainedTokenizerBase, prompt: str) -> list[int]:
    """Where candidates and rollouts start: the prompt in the chat template, then the opening (`<think>`)."""
    return prompt_ids(tokenizer, prompt) + response_ids(tokenizer, opening(tokenizer))


def response_ids(tokenizer: PreTrainedTokenizerBase, response: str) -> list[int]:
    return tokenizer(response, add_special_tokens=False)["input_ids"]


def completion_ids(tokenizer: PreTrainedTokenizerBase, response: str, *, eos: bool) -> list[int]:
    """`<think>` + response (+ the end of the turn: the format's `completion_end`, else EOS): the tokens SFT
    learns after the prompt."""
    ids = think_ids(tokenizer) + response_ids(tokenizer, response)
    if not eos:
        return ids
    end = getattr(tokenizer, "completion_end", None)
    return ids + (response_ids(tokenizer, end) if end else [tokenizer.eos_token_id])


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


# The reference's student prompt (PAPER.md 9), per chat markup: a system turn "You are a helpful assistant." (Gemma,
# which has none, opens the user turn with it), the user turn, the assistant turn opened; a completion ends with the
# family's end of turn. Written as chat templates, so that every stage formats through apply_chat_template.
REFERENCE_SYSTEM = "You are a helpful assistant."
_SYSTEM = ("{% set system = messages[0]['content'] if messages[0]['role'] == 'system' else '" + REFERENCE_SYSTEM + "' %}"
           "{% set turns = messages[1:] if messages[0]['role'] == 'system' else messages %}")
REFERENCE_FORMATS = {  # family: (the token that marks it, the chat template, the completion's end); ChatML last,
    # which other tokenizers may carry beside their own
    "llama3": ("<|start_header_id|>", _SYSTEM + "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n{{ system }}<|eot_id|>"
               "{% for m in turns %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n{{ m['content'] }}<|eot_id|>{% endfor %}"
               "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}", "<|eot_id|>"),
    "gemma": ("<start_of_turn>", _SYSTEM + "<bos>{% for m in turns %}<start_of_turn>{{ 'model' if m['role'] == 'assistant' else m['role'] }}\n"
              "{% if loop.first %}{{ system }}\n\n{% endif %}{{ m['content'] }}<end_of_turn>{% if m['role'] == 'assistant' %}\n{% endif %}"
              "{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}", "<end_of_turn>\n"),
    "chatml": ("<|im_start|>", _SYSTEM + "<|im_start|>system\n{{ system }}<|im_end|>\n{% for m in turns %}<|im_start|>{{ m['role'] }}\n"
               "{{ m['content'] }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}",
               "<|im_end|>\n"),
}

PROMPT_FORMATS = ("chat", "reference")


def apply_prompt_format(tokenizer: PreTrainedTokenizerBase, prompt_format: str, key: str = "prompt_format") -> PreTrainedTokenizerBase:
    """`chat`: the model's own chat template, completions ending in EOS (ours); `reference`: the reference's template
    for the tokenizer's markup (ChatML for Qwen and SmolLM2, Llama 3, Gemma) and its end of turn."""
    if prompt_format not in PROMPT_FORMATS:
        raise UserError(f"{key}={prompt_format}: use chat (the model's own template) or reference (the authors' per-family one)")
    if prompt_format == "reference":
        vocab = tokenizer.get_vocab()
        family = next((f for f, (marker, _, _) in REFERENCE_FORMATS.items() if marker in vocab), None)
        if family is None:
            raise UserError(f"{key}=reference knows ChatML (Qwen), Llama 3 and Gemma markup, and {tokenizer.name_or_path} has "
                            f"none of them; use {key}=chat")
        _, tokenizer.chat_template, tokenizer.completion_end = REFERENCE_FORMATS[family]
    return tokenizer

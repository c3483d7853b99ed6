"""One scoring pass: every candidate through the fine-tuned student and its base, once each.

From those two forwards (hidden states + logits) come all the scores the selectors need:
cosine similarity of the final token's hidden state at every `hidden_states` index, KL(FT || base)
over the response tokens, and the response's perplexity and self-certainty under the fine-tuned model.
"""

from __future__ import annotations

import contextlib
import copy
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm
from transformers import DynamicCache, PreTrainedModel, PreTrainedTokenizerBase

from lightning_da.generation.candidates import candidate_prefix


@dataclass
class CandidateScores:
    """Scores of n candidates. `cosine` is (n, num_layers + 1): index 0 = embeddings, i = block i.

    KL, perplexity and self-certainty are NaN for a candidate with an empty response.
    """

    cosine: torch.Tensor
    kl: torch.Tensor
    perplexity: torch.Tensor
    self_certainty: torch.Tensor


def encode_candidate(tokenizer: PreTrainedTokenizerBase, prompt: str, response: str) -> tuple[list[int], int]:
    """Token ids of chat_template(prompt) + `<think>` + response, and where the response starts.

    The three parts are tokenised apart so the response boundary is exact; both models see these ids.
    """
    head = candidate_prefix(tokenizer, prompt)
    return head + tokenizer(response, add_special_tokens=False)["input_ids"], len(head)


def _adapter_disabled(model):
    """The base model is the student with its LoRA adapter off: no second copy of the weights."""
    if not hasattr(model, "disable_adapter"):
        raise ValueError("the student has no adapter to disable; pass a separately loaded `base`")
    return model.disable_adapter()


def _prefill(model, prefix: torch.Tensor, context) -> DynamicCache:
    """The KV cache of the shared prompt prefix, all but its last token (that one starts each suffix)."""
    cache = DynamicCache(config=model.config)
    with context():
        model(input_ids=prefix[None, :-1], past_key_values=cache, use_cache=True)
    return cache


def _suffix_forward(model, cache: DynamicCache, suffix_ids, suffix_mask, offset: int, context):
    """Forward right-padded suffixes after a copy of the prefix cache; hidden states and logits of the suffixes."""
    rows = suffix_ids.size(0)
    cache = copy.deepcopy(cache)
    cache.batch_repeat_interleave(rows)
    mask = torch.cat([torch.ones(rows, offset, dtype=suffix_mask.dtype, device=suffix_mask.device), suffix_mask], dim=1)
    positions = offset + torch.arange(suffix_ids.size(1), device=suffix_ids.device)[None].expand(rows, -1)
    with context():
        out = model(input_ids=suffix_ids, attention_mask=mask, position_ids=positions, past_key_values=cache,
                    use_cache=True, output_hidden_states=True)
    return out.hidden_states, out.logits


def _per_sample_mean(values: torch.Tensor, sample: torch.Tensor, n: int) -> torch.Tensor:
    total = torch.zeros(n, dtype=values.dtype, device=values.device).index_add_(0, sample, values)
    count = torch.zeros(n, dtype=values.dtype, device=values.device).index_add_(0, sample, torch.ones_like(values))
    return total / count  # NaN where a candidate has no response token


@torch.inference_mode()
def score_candidates(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
    responses: list[str],
    *,
    base: PreTrainedModel | None = None,
    batch_size: int = 8,
    progress: bool = True,
) -> CandidateScores:
    """Score each (prompt, response) pair; `base=None` means `model` with its adapter disabled.

    The N candidates of a prompt share its prefix: each model encodes the prompt once, and only
    the responses (right-padded, at most `batch_size` at a time) run after a copy of that cache.
    Every candidate is read at its true last token; the result is in the input order.
    """
    device = next(model.parameters()).device
    groups: dict[str, list[int]] = {}
    for i, prompt in enumerate(prompts):
        groups.setdefault(prompt, []).append(i)
    results: dict[int, tuple] = {}
    ft_context = contextlib.nullcontext
    base_model, base_context = (model, lambda: _adapter_disabled(model)) if base is None else (base, contextlib.nullcontext)

    for prompt, members in tqdm(groups.items(), desc="scoring", unit="prompt", disable=not progress, leave=False):
        prefix = torch.tensor(candidate_prefix(tokenizer, prompt), device=device)
        offset = prefix.numel() - 1
        ft_cache = _prefill(model, prefix, ft_context)
        base_cache = _prefill(base_model, prefix, base_context)
        for start in range(0, len(members), batch_size):
            chunk = members[start : start + batch_size]
            # Each suffix: the prefix's last token, then the response.
            suffixes = [[int(prefix[-1])] + tokenizer(responses[i], add_special_tokens=False)["input_ids"] for i in chunk]
            lengths = torch.tensor([len(x) for x in suffixes], device=device)
            width = int(lengths.max())
            suffix_ids = torch.full((len(chunk), width), tokenizer.pad_token_id, dtype=torch.long, device=device)
            for row, ids in enumerate(suffixes):
                suffix_ids[row, : len(ids)] = torch.tensor(ids, device=device)
            suffix_mask = (torch.arange(width, device=device)[None] < lengths[:, None]).long()

            ft_hidden, ft_logits = _suffix_forward(model, ft_cache, suffix_ids, suffix_mask, offset, ft_context)
            base_hidden, base_logits = _suffix_forward(base_model, base_cache, suffix_ids, suffix_mask, offset, base_context)

            rows = torch.arange(len(chunk), device=device)
            last = lengths - 1  # the true last token of each candidate, never padding
            h_ft = torch.stack([h[rows, last] for h in ft_hidden], dim=1).float()
            h_base = torch.stack([h[rows, last] for h in base_hidden], dim=1).float()
            cosine = F.cosine_similarity(h_ft, h_base, dim=-1)  # (batch, layers + 1)

            # Suffix logits at position t predict suffix token t + 1, i.e. response token t.
            response = torch.arange(width - 1, device=device)[None] < (lengths[:, None] - 1)
            sample = rows[:, None].expand_as(response)[response]
            logp_ft = F.log_softmax(ft_logits[:, :-1][response].float(), dim=-1)
            logp_base = F.log_softmax(base_logits[:, :-1][response].float(), dim=-1)
            targets = suffix_ids[:, 1:][response]
            nll = -logp_ft.gather(1, targets[:, None]).squeeze(1)
            kl = (logp_ft.exp() * (logp_ft - logp_base)).sum(-1)
            certainty = -logp_ft.mean(-1) - math.log(logp_ft.size(-1))  # KL(uniform || p), Kang et al. 2025

            n = len(chunk)
            per_sample = (
                _per_sample_mean(kl, sample, n),
                _per_sample_mean(nll, sample, n).exp(),
                _per_sample_mean(certainty, sample, n),
            )
            for row, i in enumerate(chunk):
                results[i] = (cosine[row].cpu(), *(s[row].cpu() for s in per_sample))

    ordered = [results[i] for i in range(len(prompts))]
    return CandidateScores(
        cosine=torch.stack([r[0] for r in ordered]),
        kl=torch.stack([r[1] for r in ordered]),
        perplexity=torch.stack([r[2] for r in ordered]),
        self_certainty=torch.stack([r[3] for r in ordered]),
    )

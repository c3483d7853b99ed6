"""One scoring pass: every candidate through the fine-tuned student and its base, once each.

From those two forwards (hidden states + logits) come all the scores the selectors need:
cosine similarity of the final token's hidden state at every `hidden_states` index, KL(FT || base)
over the response tokens, and the response's perplexity and self-certainty under the fine-tuned model.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

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


def _forward(model, input_ids, attention_mask, context=contextlib.nullcontext):
    with context():
        out = model(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True)
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

    Candidates are batched by length (less padding), right-padded, and read at their true last
    token; the result is in the input order.
    """
    encoded = [encode_candidate(tokenizer, p, r) for p, r in zip(prompts, responses, strict=True)]
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i][0]))
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id
    results: dict[int, tuple] = {}
    batches = range(0, len(order), batch_size)
    for start in tqdm(batches, desc="scoring", unit="batch", disable=not progress, leave=False):
        chunk = order[start : start + batch_size]
        lengths = torch.tensor([len(encoded[i][0]) for i in chunk], device=device)
        starts = torch.tensor([encoded[i][1] for i in chunk], device=device)
        width = int(lengths.max())
        input_ids = torch.full((len(chunk), width), pad, dtype=torch.long, device=device)
        for row, i in enumerate(chunk):
            input_ids[row, : lengths[row]] = torch.tensor(encoded[i][0], device=device)
        attention_mask = (torch.arange(width, device=device)[None] < lengths[:, None]).long()

        ft_hidden, ft_logits = _forward(model, input_ids, attention_mask)
        if base is None:
            base_hidden, base_logits = _forward(model, input_ids, attention_mask, lambda: _adapter_disabled(model))
        else:
            base_hidden, base_logits = _forward(base, input_ids, attention_mask)

        rows = torch.arange(len(chunk), device=device)
        last = lengths - 1  # the true last token of each sequence, never padding
        h_ft = torch.stack([h[rows, last] for h in ft_hidden], dim=1).float()
        h_base = torch.stack([h[rows, last] for h in base_hidden], dim=1).float()
        cosine = F.cosine_similarity(h_ft, h_base, dim=-1)  # (batch, layers + 1)

        # Logits at position t predict token t + 1: response tokens are predicted from starts - 1 .. lengths - 2.
        positions = torch.arange(width - 1, device=device)[None]
        response = (positions >= starts[:, None] - 1) & (positions <= lengths[:, None] - 2)
        sample = rows[:, None].expand_as(response)[response]
        logp_ft = F.log_softmax(ft_logits[:, :-1][response].float(), dim=-1)
        logp_base = F.log_softmax(base_logits[:, :-1][response].float(), dim=-1)
        targets = input_ids[:, 1:][response]
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

    ordered = [results[i] for i in range(len(encoded))]
    return CandidateScores(
        cosine=torch.stack([r[0] for r in ordered]),
        kl=torch.stack([r[1] for r in ordered]),
        perplexity=torch.stack([r[2] for r in ordered]),
        self_certainty=torch.stack([r[3] for r in ordered]),
    )

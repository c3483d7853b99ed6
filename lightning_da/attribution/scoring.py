"""One scoring pass: every candidate through the fine-tuned student and its base, once each.

From those two forwards (hidden states + logits) come all the scores the selectors need:
cosine similarity of the final token's hidden state at every `hidden_states` index, KL(FT || base)
over the response tokens, and the response's perplexity and self-certainty under the fine-tuned model.
"""

from __future__ import annotations

import contextlib
import copy
import math
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm
from transformers import DynamicCache, PreTrainedModel, PreTrainedTokenizerBase

from lightning_da.formats import prefix_ids
from lightning_da.models.cache import with_cache


@dataclass
class CandidateScores:
    """The scores of one scoring pass, flat (one row per candidate, as `score_candidates` returns
    them) or `grouped` by prompt (P, N), the shape the selectors read.

    `cosine` has one more axis, the `hidden_states` index (0 = embeddings, i = block i). KL,
    perplexity and self-certainty are NaN for a candidate with an empty response.
    """

    cosine: torch.Tensor
    kl: torch.Tensor
    perplexity: torch.Tensor
    self_certainty: torch.Tensor

    @classmethod
    def cat(cls, parts: list[CandidateScores]) -> CandidateScores:
        """Consecutive blocks of candidates or prompts (e.g. one per DDP rank), joined in order."""
        return cls(*(torch.cat([getattr(p, f.name) for p in parts]) for f in fields(cls)))

    def grouped(self, n_candidates: int) -> CandidateScores:
        """Flat prompt-major scores (prompt 0's N candidates first) -> (P, N)."""
        return CandidateScores(*(getattr(self, f.name).reshape(-1, n_candidates, *getattr(self, f.name).shape[1:])
                                 for f in fields(self)))

    def __getitem__(self, rows) -> CandidateScores:
        """The same scores for a subset of rows (prompts, once grouped)."""
        return CandidateScores(*(getattr(self, f.name)[rows] for f in fields(self)))

    @property
    def num_states(self) -> int:
        return self.cosine.size(-1)


def num_hidden_states(model: PreTrainedModel) -> int:
    """How many `hidden_states` a forward returns: the embeddings, then one per decoder block."""
    return model.config.get_text_config().num_hidden_layers + 1


def adapter_disabled(model):
    """The base model is the student with its LoRA adapter off: no second copy of the weights."""
    if not hasattr(model, "disable_adapter"):
        raise ValueError("the student has no adapter to disable; pass a separately loaded `base`")
    return model.disable_adapter()


def _prefill(model, prefix: torch.Tensor, context) -> DynamicCache:
    """The KV cache of the shared prompt prefix, all but its last token (that one starts each suffix)."""
    cache = DynamicCache(config=model.config)
    with context():
        model(input_ids=prefix[None, :-1], **with_cache(cache), use_cache=True, logits_to_keep=1)  # no vocab-wide logits
    return cache


def _extend(model, cache: DynamicCache, inputs: dict, context):
    """Run `inputs` after what `cache` holds (the cache grows); hidden states and fp32 logits of its ids."""
    with context():
        out = model(**inputs, **with_cache(cache), use_cache=True, output_hidden_states=True)
    return out.hidden_states, out.logits.float()


def _token_scores(ft_logits: torch.Tensor, base_logits: torch.Tensor, targets: torch.Tensor):
    """Per-token KL(FT || base), NLL of `targets` under FT, and FT's self-certainty KL(uniform || p).

    In place on the two logits buffers, so a chunk needs about three vocabulary-sized buffers.
    """
    logp_ft = ft_logits.sub_(ft_logits.logsumexp(-1, keepdim=True))
    logp_base = base_logits.sub_(base_logits.logsumexp(-1, keepdim=True))
    nll = -logp_ft.gather(-1, targets[..., None]).squeeze(-1)
    certainty = -logp_ft.mean(-1) - math.log(logp_ft.size(-1))  # Kang et al. 2025
    log_ratio = logp_base.neg_().add_(logp_ft)
    kl = log_ratio.mul_(logp_ft.exp()).sum(-1)
    return kl, nll, certainty


def _chunk_length(width: int, rows: int, chunk_tokens: int) -> int:
    """Positions per row in each forward: at most chunk_tokens in all, in equal chunks (not 32 + 1)."""
    n_chunks = -(-width // max(1, chunk_tokens // rows))
    return -(-width // n_chunks)


def suffix_batch(suffixes: list[list[int]], *, offset: int, pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded suffix ids (rows, width) after a prefix of `offset` cached positions, the attention
    mask over prefix + suffix, and each suffix's length."""
    rows = len(suffixes)
    lengths = torch.tensor([len(x) for x in suffixes], device=device)
    width = int(lengths.max())
    ids = torch.full((rows, width), pad_id, dtype=torch.long, device=device)
    for row, row_ids in enumerate(suffixes):
        ids[row, : len(row_ids)] = torch.tensor(row_ids, device=device)
    mask = torch.cat([torch.ones(rows, offset, dtype=torch.long, device=device),
                      (torch.arange(width, device=device)[None] < lengths[:, None]).long()], dim=1)
    return ids, mask, lengths


def suffix_chunks(ids: torch.Tensor, mask: torch.Tensor, *, offset: int, chunk_tokens: int):
    """(begin, end, model inputs) for each chunk of about `chunk_tokens` positions (all rows together);
    each chunk extends the cache the previous ones grew."""
    rows, width = ids.shape
    length = _chunk_length(width, rows, chunk_tokens)
    for begin in range(0, width, length):
        end = min(begin + length, width)
        positions = torch.arange(offset + begin, offset + end, device=ids.device)[None].expand(rows, -1)
        yield begin, end, {"input_ids": ids[:, begin:end], "attention_mask": mask[:, : offset + end], "position_ids": positions}


def ending_in(last: torch.Tensor, begin: int, end: int) -> torch.Tensor:
    """The rows whose final token (suffix index `last`) lies in positions begin..end-1 of the suffixes."""
    return ((last >= begin) & (last < end)).nonzero().squeeze(1)


def _score_suffixes(suffixes: list[list[int]], ft, base, *, offset: int, pad_id: int, chunk_tokens: int):
    """(cosine by layer, KL, perplexity, self-certainty) for each suffix; `ft` and `base` are
    (model, prefix cache, context) and advance together, about `chunk_tokens` positions at a time."""
    (ft_model, ft_prefix, ft_context), (base_model, base_prefix, base_context) = ft, base
    device = next(ft_model.parameters()).device
    rows = len(suffixes)
    suffix_ids, mask, lengths = suffix_batch(suffixes, offset=offset, pad_id=pad_id, device=device)
    width = suffix_ids.size(1)
    ft_cache, base_cache = repeat_cache(ft_prefix, rows), repeat_cache(base_prefix, rows)

    last = lengths - 1  # the true last token of each candidate, never padding
    h_ft = h_base = None
    sums = torch.zeros(3, rows, device=device)  # KL, NLL, certainty summed over response tokens
    for begin, end, inputs in suffix_chunks(suffix_ids, mask, offset=offset, chunk_tokens=chunk_tokens):
        step = torch.arange(begin, end, device=device)
        ft_hidden, ft_logits = _extend(ft_model, ft_cache, inputs, ft_context)
        base_hidden, base_logits = _extend(base_model, base_cache, inputs, base_context)

        if h_ft is None:
            h_ft = torch.zeros(rows, len(ft_hidden), ft_hidden[0].size(-1), device=device)
            h_base = torch.zeros_like(h_ft)
        ending = ending_in(last, begin, end)
        h_ft[ending] = torch.stack([h[ending, last[ending] - begin] for h in ft_hidden], dim=1).float()
        h_base[ending] = torch.stack([h[ending, last[ending] - begin] for h in base_hidden], dim=1).float()

        # Suffix position t predicts suffix token t + 1, i.e. response token t.
        targets = suffix_ids[:, (step + 1).clamp(max=width - 1)]
        valid = step[None] < last[:, None]
        for k, value in enumerate(_token_scores(ft_logits, base_logits, targets)):
            sums[k] += torch.where(valid, value, 0.0).sum(1)

    kl, nll, certainty = sums / last  # NaN where a candidate has no response token
    cosine = F.cosine_similarity(h_ft, h_base, dim=-1)  # (rows, layers + 1)
    return [(cosine[r].cpu(), kl[r].cpu(), nll[r].exp().cpu(), certainty[r].cpu()) for r in range(rows)]


def repeat_cache(cache: DynamicCache, rows: int) -> DynamicCache:
    """A copy of a one-row prefix cache for `rows` suffixes."""
    cache = copy.deepcopy(cache)
    cache.batch_repeat_interleave(rows)
    return cache


def by_prompt(tokenizer: PreTrainedTokenizerBase, prompts: list[str], responses: list[list[int]], *, batch_size: int,
              device, progress: bool, desc: str):
    """For each distinct prompt: its prefix ids (on `device`) and its candidates in batches of
    `batch_size`, each as (indices into `prompts`, suffixes). A suffix is the prefix's last token,
    then the response's ids, so a prefix cache of all but that token serves every suffix."""
    groups: dict[str, list[int]] = {}
    for i, prompt in enumerate(prompts):
        groups.setdefault(prompt, []).append(i)
    for prompt, members in tqdm(groups.items(), desc=desc, unit="prompt", disable=not progress, leave=False):
        prefix = torch.tensor(prefix_ids(tokenizer, prompt), device=device)
        yield prefix, [(chunk, [[int(prefix[-1]), *responses[i]] for i in chunk])
                       for chunk in (members[s : s + batch_size] for s in range(0, len(members), batch_size))]


# no_grad, not inference_mode: the training callback scores with a model FSDP may shard.
@torch.no_grad()
def score_candidates(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
    responses: list[list[int]],
    *,
    base: PreTrainedModel | None = None,
    batch_size: int = 8,
    chunk_tokens: int = 256,
    progress: bool = True,
) -> CandidateScores:
    """Score each (prompt, response ids) pair; `base=None` means `model` with its adapter disabled.

    The responses are token ids as sampled (`Completion.response_ids`, no EOS): decoded text need not
    tokenise back to the same ids. The N candidates of a prompt share its prefix: each model encodes
    the prompt once, and only the responses (right-padded, at most `batch_size` at a time) run after
    a copy of that cache, about `chunk_tokens` positions (all rows together) per forward, so the
    logits buffers stay about chunk_tokens x vocabulary whatever the batch size or response length
    (the copies of the prompt's KV cache grow with rows x length). Every candidate is read at its
    true last token; the result is in the input order.
    """
    device = next(model.parameters()).device
    results: dict[int, tuple] = {}
    ft_context = contextlib.nullcontext
    base_model, base_context = (model, lambda: adapter_disabled(model)) if base is None else (base, contextlib.nullcontext)

    for prefix, batches in by_prompt(tokenizer, prompts, responses, batch_size=batch_size, device=device,
                                     progress=progress, desc="scoring"):
        offset = prefix.numel() - 1
        ft_cache = _prefill(model, prefix, ft_context)
        base_cache = _prefill(base_model, prefix, base_context)
        for chunk, suffixes in batches:
            results.update(zip(chunk, _score_suffixes(
                suffixes, (model, ft_cache, ft_context), (base_model, base_cache, base_context),
                offset=offset, pad_id=tokenizer.pad_token_id, chunk_tokens=chunk_tokens,
            ), strict=True))

    ordered = [results[i] for i in range(len(prompts))]
    return CandidateScores(*(torch.stack(column) for column in zip(*ordered, strict=True)))

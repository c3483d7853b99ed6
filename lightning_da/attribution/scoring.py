"""One scoring pass: every candidate through the fine-tuned student and its base, once each.

From those two forwards (hidden states + logits) come all the scores the selectors need, the
reference code's full set (PAPER.md section 8): cosine similarity of the final token's hidden state
at every `hidden_states` index; and, each a mean over the response tokens' next-token distributions,
KL(FT || base), KL(base || FT), the response's perplexity under each model, and the fine-tuned
model's self-certainty and Gini impurity. Without a base (a model evaluated as it is), only the
fine-tuned model's scores exist; the others are NaN.
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

from lightning_da.errors import UserError
from lightning_da.formats import prefix_ids
from lightning_da.models.versions import with_cache


@dataclass
class CandidateScores:
    """The scores of one scoring pass, flat (one row per candidate, as `score_candidates` returns
    them) or `grouped` by prompt (P, N), the shape the selectors read.

    `cosine` has one more axis, the `hidden_states` index (0 = embeddings, i = block i). The
    per-token means are NaN for a candidate with an empty response, and those that need the base
    (cosine, both KLs, base perplexity) are NaN without one.
    """

    cosine: torch.Tensor
    kl: torch.Tensor  # KL(FT || base)
    perplexity: torch.Tensor  # under FT
    self_certainty: torch.Tensor  # FT's KL(uniform || p) (Kang et al. 2025)
    gini: torch.Tensor  # FT's 1 - sum p^2
    reverse_kl: torch.Tensor  # KL(base || FT)
    base_perplexity: torch.Tensor  # under the base

    @classmethod
    def filled(cls, cosine: torch.Tensor, **scores: torch.Tensor) -> CandidateScores:
        """Scores with the cosine and the named per-candidate ones; every other one NaN."""
        nan = torch.full(cosine.shape[:-1], math.nan)
        return cls(cosine, **{f.name: scores.get(f.name, nan) for f in fields(cls) if f.name != "cosine"})

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


def _extend(model, cache: DynamicCache, inputs: dict, context, *, hidden: bool = True):
    """Run `inputs` after what `cache` holds (the cache grows); hidden states (if asked) and fp32 logits of its ids."""
    with context():
        out = model(**inputs, **with_cache(cache), use_cache=True, output_hidden_states=hidden)
    return out.hidden_states, out.logits.float()


# The per-token scores `_token_scores` returns, in its order; each becomes a mean over response tokens.
TOKEN_SCORES = ("kl", "nll", "self_certainty", "gini", "reverse_kl", "base_nll")
FT_ONLY = ("nll", "self_certainty", "gini")  # what exists without a base


def _token_scores(ft_logits: torch.Tensor, base_logits: torch.Tensor | None, targets: torch.Tensor) -> list[torch.Tensor]:
    """Per token (`TOKEN_SCORES`): KL(FT || base), NLL of `targets` under FT, FT's self-certainty
    KL(uniform || p), FT's Gini impurity 1 - sum p^2, KL(base || FT), NLL under the base (NaN without one).

    In place on the two logits buffers, so a chunk needs about three vocabulary-sized buffers.
    """
    logp_ft = ft_logits.sub_(ft_logits.logsumexp(-1, keepdim=True))
    nll = -logp_ft.gather(-1, targets[..., None]).squeeze(-1)
    certainty = -logp_ft.mean(-1) - math.log(logp_ft.size(-1))  # Kang et al. 2025
    p_ft = logp_ft.exp()
    gini = 1 - torch.linalg.vecdot(p_ft, p_ft)
    if base_logits is None:
        nan = torch.full_like(nll, math.nan)
        return [nan, nll, certainty, gini, nan, nan]
    logp_base = base_logits.sub_(base_logits.logsumexp(-1, keepdim=True))
    base_nll = -logp_base.gather(-1, targets[..., None]).squeeze(-1)
    log_ratio = logp_base.neg_().add_(logp_ft)  # log p_FT - log p_base
    kl = torch.linalg.vecdot(p_ft, log_ratio)
    p_base = logp_ft.sub_(log_ratio).exp_()  # in the FT buffer: log p_FT - (log p_FT - log p_base)
    reverse_kl = -torch.linalg.vecdot(p_base, log_ratio)
    return [kl, nll, certainty, gini, reverse_kl, base_nll]


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


HIDDEN_AT = ("last_token", "padded_end")


def check_hidden_at(hidden_at: str, key: str = "scoring_hidden_at") -> str:
    if hidden_at not in HIDDEN_AT:
        raise UserError(f"{key}={hidden_at}: use last_token (each candidate's own last token) or padded_end (the "
                        "reference's: the right-padded batch's last position)")
    return hidden_at


def _score_suffixes(suffixes: list[list[int]], ft, base, *, offset: int, pad_id: int, chunk_tokens: int,
                    hidden_at: str = "last_token") -> list[dict]:
    """Each suffix's scores (`CandidateScores`' fields); `ft` and `base` (None: none) are (model,
    prefix cache, context) and advance together, about `chunk_tokens` positions at a time. The hidden
    states are read at each suffix's last token, or with `hidden_at="padded_end"` at the batch's last
    position, a pad for every shorter suffix (the reference's fault, PAPER.md 6, kept to measure it)."""
    ft_model, ft_prefix, ft_context = ft
    device = next(ft_model.parameters()).device
    rows = len(suffixes)
    suffix_ids, mask, lengths = suffix_batch(suffixes, offset=offset, pad_id=pad_id, device=device)
    width = suffix_ids.size(1)
    ft_cache = repeat_cache(ft_prefix, rows)
    base_cache = repeat_cache(base[1], rows) if base is not None else None

    last = lengths - 1  # the true last token of each candidate, never padding
    read = last if hidden_at == "last_token" else torch.full_like(last, width - 1)  # where the hidden states are read
    h_ft = h_base = None
    sums = torch.zeros(len(TOKEN_SCORES), rows, device=device)  # each per-token score summed over response tokens
    for begin, end, inputs in suffix_chunks(suffix_ids, mask, offset=offset, chunk_tokens=chunk_tokens):
        step = torch.arange(begin, end, device=device)
        ft_hidden, ft_logits = _extend(ft_model, ft_cache, inputs, ft_context, hidden=base is not None)
        base_logits = None
        if base is not None:
            base_hidden, base_logits = _extend(base[0], base_cache, inputs, base[2])
            if h_ft is None:
                h_ft = torch.zeros(rows, len(ft_hidden), ft_hidden[0].size(-1), device=device)
                h_base = torch.zeros_like(h_ft)
            ending = ending_in(read, begin, end)
            h_ft[ending] = torch.stack([h[ending, read[ending] - begin] for h in ft_hidden], dim=1).float()
            h_base[ending] = torch.stack([h[ending, read[ending] - begin] for h in base_hidden], dim=1).float()

        # Suffix position t predicts suffix token t + 1, i.e. response token t.
        targets = suffix_ids[:, (step + 1).clamp(max=width - 1)]
        valid = step[None] < last[:, None]
        for k, value in enumerate(_token_scores(ft_logits, base_logits, targets)):
            sums[k] += torch.where(valid, value, 0.0).sum(1)

    means = dict(zip(TOKEN_SCORES, (sums / last).cpu(), strict=True))  # NaN where a candidate has no response token
    states = num_hidden_states(ft_model)
    cosine = (F.cosine_similarity(h_ft, h_base, dim=-1).cpu() if base is not None  # (rows, layers + 1)
              else torch.full((rows, states), math.nan))
    scores = {"cosine": cosine, "kl": means["kl"], "perplexity": means["nll"].exp(), "self_certainty": means["self_certainty"],
              "gini": means["gini"], "reverse_kl": means["reverse_kl"], "base_perplexity": means["base_nll"].exp()}
    return [{name: value[r] for name, value in scores.items()} for r in range(rows)]


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


# no_grad, not inference_mode: the training callback scores with a model FSDP may shard. A `with` block, not a
# decorator, here and in the other gradient-free science: mutmut leaves decorated functions unmutated.
def score_candidates(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
    responses: list[list[int]],
    *,
    base: PreTrainedModel | None | bool = None,
    batch_size: int = 8,
    chunk_tokens: int = 256,
    hidden_at: str = "last_token",
    progress: bool = True,
) -> CandidateScores:
    """Score each (prompt, response ids) pair; `base=None` means `model` with its adapter disabled,
    `base=False` no base at all (a model evaluated as it is: only its own scores).

    The responses are token ids as sampled (`Completion.response_ids`, no EOS): decoded text need not
    tokenise back to the same ids. The N candidates of a prompt share its prefix: each model encodes
    the prompt once, and only the responses (right-padded, at most `batch_size` at a time) run after
    a copy of that cache, about `chunk_tokens` positions (all rows together) per forward, so the
    logits buffers stay about chunk_tokens x vocabulary whatever the batch size or response length
    (the copies of the prompt's KV cache grow with rows x length). Every candidate is read at its
    true last token (`hidden_at="padded_end"`: the hidden states at its batch's last position instead, as
    the reference did; then `batch_size` 4 makes the reference's batches); the result is in the input order.
    """
    check_hidden_at(hidden_at, "hidden_at")
    with torch.no_grad():
        device = next(model.parameters()).device
        results: dict[int, dict] = {}
        ft_context = contextlib.nullcontext
        if base is False:
            base_model = base_context = None
        else:
            base_model, base_context = (model, lambda: adapter_disabled(model)) if base is None else (base, contextlib.nullcontext)

        for prefix, batches in by_prompt(tokenizer, prompts, responses, batch_size=batch_size, device=device,
                                         progress=progress, desc="scoring"):
            offset = prefix.numel() - 1
            ft = (model, _prefill(model, prefix, ft_context), ft_context)
            on_base = (base_model, _prefill(base_model, prefix, base_context), base_context) if base_model is not None else None
            for chunk, suffixes in batches:
                results.update(zip(chunk, _score_suffixes(suffixes, ft, on_base, offset=offset, pad_id=tokenizer.pad_token_id,
                                                          chunk_tokens=chunk_tokens, hidden_at=hidden_at), strict=True))

        return CandidateScores(**{f.name: torch.stack([results[i][f.name] for i in range(len(prompts))])
                                  for f in fields(CandidateScores)})

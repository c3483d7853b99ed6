"""The cheap path of latent attribution: each candidate's cosine at one layer, without a scoring pass.

The fine-tuned side comes from sampling (`sample_completions(states_at=layer)` keeps each
candidate's final-token state). The base runs only its first `layer` blocks (adapter disabled, no
later blocks, no lm_head, no logits), over each prompt once (a cache its candidates share) and each
response once. The numbers are `score_candidates`' cosine at `layer`, up to the rounding of cached
and batched decoding.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import DynamicCache, PreTrainedModel, PreTrainedTokenizerBase

from lightning_da.attribution.scoring import adapter_disabled, by_prompt, ending_in, repeat_cache, suffix_batch, suffix_chunks
from lightning_da.attribution.selectors import least_similar
from lightning_da.generation import Completion, SamplingConfig, flatten_candidates, sample_completions
from lightning_da.models.hidden_states import run_until
from lightning_da.models.versions import with_cache

# Positions (all rows together) per base forward. No vocabulary-sized buffer exists on this path, so a
# chunk can be far longer than the scoring pass's: the attention scores (rows x heads x chunk x length) bound it.
CHUNK_TOKENS = 2048


def final_states(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: list[str], responses: list[list[int]],
                 layer: int, *, context=contextlib.nullcontext, batch_size: int = 8, chunk_tokens: int = CHUNK_TOKENS,
                 progress: bool = False) -> torch.Tensor:
    """(rows, hidden) float32: `hidden_states[layer]` of each candidate's final token (the last prompt
    token for an empty response), running blocks 0..layer-1 only, within `context()`."""
    with torch.no_grad():
        device = next(model.parameters()).device
        out: dict[int, torch.Tensor] = {}
        for prefix, batches in by_prompt(tokenizer, prompts, responses, batch_size=batch_size, device=device,
                                         progress=progress, desc=f"base to layer {layer}"):
            offset = prefix.numel() - 1
            prefix_cache = DynamicCache(config=model.config)
            with context():
                run_until(model, layer, input_ids=prefix[None, :-1], **with_cache(prefix_cache))
            for members, suffixes in batches:
                ids, mask, lengths = suffix_batch(suffixes, offset=offset, pad_id=tokenizer.pad_token_id, device=device)
                cache, last = repeat_cache(prefix_cache, len(members)), lengths - 1
                for begin, end, inputs in suffix_chunks(ids, mask, offset=offset, chunk_tokens=chunk_tokens):
                    with context():
                        hidden = run_until(model, layer, **inputs, **with_cache(cache))
                    for row in ending_in(last, begin, end).tolist():
                        out[members[row]] = hidden[row, last[row] - begin].float()
        return torch.stack([out[i] for i in range(len(prompts))])


def latent_cosines(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: list[str],
                   completions: list[Completion], layer: int, *, base: PreTrainedModel | None = None,
                   batch_size: int = 8, chunk_tokens: int = CHUNK_TOKENS, progress: bool = False) -> torch.Tensor:
    """(rows,) cosine(FT, base) at `hidden_states[layer]` of each (prompt, completion)'s final token;
    `base=None` is `model` with its adapter disabled. The FT state is the one sampling kept
    (`Completion.state`); completions without one (another engine sampled them) get it from the
    same truncated forward with the adapter on."""
    responses = [c.response_ids for c in completions]
    kwargs = {"batch_size": batch_size, "chunk_tokens": chunk_tokens, "progress": progress}
    if all(c.state is not None for c in completions):
        ft = torch.stack([c.state for c in completions])
    else:
        ft = final_states(model, tokenizer, prompts, responses, layer, **kwargs)
    if base is None:
        base_states = final_states(model, tokenizer, prompts, responses, layer, context=lambda: adapter_disabled(model), **kwargs)
    else:
        base_states = final_states(base, tokenizer, prompts, responses, layer, **kwargs)
    return F.cosine_similarity(ft.to(base_states.device), base_states, dim=-1).cpu()


@dataclass
class LatentBlock:
    """One block of prompts by the cheap path: N completions each, their cosines (P, N) at the layer,
    the pick (P,), and the seconds spent sampling and selecting."""

    completions: list[list[Completion]]
    cosines: torch.Tensor
    chosen: torch.Tensor
    sampling_s: float
    selection_s: float


def latent_block(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: list[str], *, n: int, layer: int,
                 sampling: SamplingConfig, seed: int, batch_size: int = 8, chunk_tokens: int = CHUNK_TOKENS,
                 base: PreTrainedModel | None = None, sampler: Callable | None = None, progress: bool = False) -> LatentBlock:
    """Sample N candidates per prompt (keeping each one's state at `layer`; `sampler`: another engine's
    `sample_completions`), then pick the least base-like: `LatentSimilarity` without a scoring pass."""
    started = time.perf_counter()
    kwargs = {"n": n, "sampling": sampling, "batch_size": batch_size, "seed": seed, "progress": progress}
    if sampler is None:
        completions = sample_completions(model, tokenizer, prompts, states_at=layer, **kwargs)
    else:
        completions = sampler(tokenizer, prompts, **kwargs)
    sampled = time.perf_counter()
    flat_prompts, flat = flatten_candidates(prompts, completions)
    cosines = latent_cosines(model, tokenizer, flat_prompts, flat, layer, base=base, batch_size=batch_size,
                             chunk_tokens=chunk_tokens).view(len(prompts), n)
    for c in flat:
        c.state = None  # kept only until scored
    return LatentBlock(completions, cosines, least_similar(cosines), sampled - started, time.perf_counter() - sampled)

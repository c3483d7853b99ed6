"""N candidates per prompt from the fine-tuned student, batched across prompts with left padding.

Generation continues from the shared prefix (`lightning_da.formats`): chat_template(prompt) +
`<think>`, the same ids the scoring pass uses.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm
from transformers import DynamicCache, PreTrainedModel, PreTrainedTokenizerBase

from lightning_da.formats import eos_ids, pad_ids, prefix_ids
from lightning_da.generation.sampling import SamplingConfig
from lightning_da.models.hidden_states import FinalTokenStates
from lightning_da.models.versions import with_cache


@dataclass
class Completion:
    """A sampled continuation: its token ids up to and including the first EOS, and whether
    `max_new_tokens` cut it before any EOS. `state`: the sampling model's `hidden_states[layer]` of
    its final token (the last prompt token when the response is empty), when sampling was asked for it.
    `logprobs`: the sampling engine's log-probability of each token of `ids` (vLLM's, for GRPO's correction)."""

    ids: list[int]
    truncated: bool
    state: torch.Tensor | None = None
    logprobs: list[float] | None = None

    @property
    def response_ids(self) -> list[int]:
        """The response as sampled, without its EOS: the ids every scorer reads."""
        return self.ids if self.truncated else self.ids[:-1]


def batch_seed(seed: int, first_index: int) -> int:
    """The seed of the batch (or block, or rank's shard) whose first prompt is `first_index`: it samples
    the same whatever ran before it, in this process or on another rank."""
    return seed + first_index


# no_grad, not inference_mode: under FSDP the layers gathered here are reused by training.
@torch.no_grad()
def sample_completions(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
    *,
    n: int,
    sampling: SamplingConfig,
    batch_size: int = 8,
    seed: int = 0,
    progress: bool = True,
    synced_gpus: bool = False,
    states_at: int | None = None,
) -> list[list[Completion]]:
    """`n` completions after each prompt's shared prefix (chat template + `<think>`), as sampled
    token ids. Batch k of `batch_size` prompts is seeded `seed + k x batch_size`, so it samples the
    same whatever ran before it (or on another rank). `synced_gpus`: every rank keeps stepping until
    all are done, as a sharded model needs (each step gathers its layers from every rank).

    `states_at`: also keep each completion's final-token `hidden_states[states_at]` (`Completion.state`,
    float32, on the model's device). Generation then runs one step past `max_new_tokens`, whose token is
    dropped, for the cut completions' last token; the completions are the same as without it."""
    eos = set(eos_ids(model.generation_config.eos_token_id, tokenizer))
    out: list[list[Completion]] = []
    for start in tqdm(range(0, len(prompts), batch_size), desc="sampling", unit="batch", disable=not progress, leave=False):
        ids, mask = pad_ids([prefix_ids(tokenizer, p) for p in prompts[start : start + batch_size]], tokenizer.pad_token_id, left=True)
        ids, mask = ids.to(next(model.parameters()).device), mask.to(next(model.parameters()).device)
        cache = _shared_prefill(model, ids, mask, n)
        torch.manual_seed(batch_seed(seed, start))
        states = FinalTokenStates(model, states_at, eos) if states_at is not None else None
        with states.capturing() if states else contextlib.nullcontext():
            generated = model.generate(
                input_ids=ids.repeat_interleave(n, dim=0), attention_mask=mask.repeat_interleave(n, dim=0),
                **with_cache(cache), **{**sampling.generate_kwargs(), "max_new_tokens": sampling.max_new_tokens + bool(states)},
                pad_token_id=tokenizer.pad_token_id, synced_gpus=synced_gpus,
            )
        rows = _completions(generated[:, ids.size(1) : ids.size(1) + sampling.max_new_tokens].tolist(), eos,
                            states.states if states else None)
        out.extend(rows[i : i + n] for i in range(0, len(rows), n))
    return out


def _shared_prefill(model: PreTrainedModel, ids: torch.Tensor, mask: torch.Tensor, n: int) -> DynamicCache:
    """Each left-padded prompt prefilled once, its cache copied for its n samples (instead of n prefills).
    The cache stops one token short: generate feeds the last prompt token itself."""
    cache = DynamicCache(config=model.config)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)  # as generate numbers left-padded rows
    model(input_ids=ids[:, :-1], attention_mask=mask[:, :-1], position_ids=positions[:, :-1], **with_cache(cache),
          use_cache=True, logits_to_keep=1)
    cache.batch_repeat_interleave(n)
    return cache


def _completions(rows: list[list[int]], eos: set[int], states: torch.Tensor | None) -> list[Completion]:
    """Each generated row up to and including its first EOS, or whole and `truncated`; with its state."""
    out = []
    for r, row in enumerate(rows):
        end = next((i for i, token in enumerate(row) if token in eos), None)
        out.append(Completion(row[: end + 1], False) if end is not None else Completion(row, True))
        if states is not None:
            out[-1].state = states[r]
    return out


def decode_completions(tokenizer: PreTrainedTokenizerBase, completions: list[list[Completion]]) -> list[list[str]]:
    """Each prompt's responses as text (the text after `<think>`), special tokens removed."""
    return [tokenizer.batch_decode([c.ids for c in row], skip_special_tokens=True) for row in completions]


def sample_candidates(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: list[str], **kwargs) -> list[list[str]]:
    """`n` responses for each prompt, decoded; the keywords are `sample_completions`'."""
    return decode_completions(tokenizer, sample_completions(model, tokenizer, prompts, **kwargs))


def flatten_candidates(prompts: list[str], candidates: list[list]) -> tuple[list[str], list]:
    """Prompt-major (prompt, candidate) pairs: each prompt repeated once per candidate (text or `Completion`)."""
    return [p for p, row in zip(prompts, candidates, strict=True) for _ in row], [c for row in candidates for c in row]

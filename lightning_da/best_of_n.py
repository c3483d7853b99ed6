"""Best-of-N on a block of prompts, shared by evaluate.py and the training callback: sample N
candidates per prompt, score them in one pass, grade each candidate once; then the blocks of all
data-parallel ranks joined in order, ready for `compare_selectors`."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from lightning_da.attribution.latent import latent_block
from lightning_da.attribution.scoring import CandidateScores, score_candidates
from lightning_da.distributed import all_gather_objects, batch_aligned_shard
from lightning_da.generation import SamplingConfig, batch_seed, decode_completions, flatten_candidates, sample_completions
from lightning_da.tasks import Task

log = logging.getLogger(__name__)


@dataclass
class BestOfN:
    """Candidates of P prompts (N each) as text and as the sampled response ids the scores read, their
    grouped scores (P, N), and per candidate `flags` (what the rate counts), `bad` (what label-using
    selectors avoid), the judge's `verdicts` and a graded judge's scores (`graded`, else None)."""

    candidates: list[list[str]]
    candidate_ids: list[list[list[int]]]
    scores: CandidateScores
    flags: torch.Tensor
    bad: torch.Tensor
    verdicts: list[list[str | None]]
    graded: list[list[float | None]]

    @classmethod
    def cat(cls, parts: list[BestOfN]) -> BestOfN:
        return cls(
            candidates=[row for p in parts for row in p.candidates],
            candidate_ids=[row for p in parts for row in p.candidate_ids],
            scores=CandidateScores.cat([p.scores for p in parts]),
            flags=torch.cat([p.flags for p in parts]),
            bad=torch.cat([p.bad for p in parts]),
            verdicts=[row for p in parts for row in p.verdicts],
            graded=[row for p in parts for row in p.graded],
        )


def best_of_n_block(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
    answers: list,
    *,
    task: Task,
    judge,
    n: int,
    sampling: SamplingConfig,
    seed: int,
    base: PreTrainedModel | None = None,
    batch_size: int = 8,
    scoring_batch_size: int = 8,
    chunk_tokens: int = 256,
    hidden_at: str = "last_token",
    progress: bool = True,
    sampler: Callable | None = None,
) -> BestOfN:
    """Sample, score and grade one block of prompts; batch k is seeded `seed + k x batch_size`.
    `sampler`: another engine's `sample_completions` (vLLM's), else Hugging Face `generate` on `model`."""
    started = time.perf_counter()
    sample = sampler or partial(sample_completions, model)
    completions = sample(tokenizer, prompts, n=n, sampling=sampling, batch_size=batch_size, seed=seed, progress=progress)
    candidates = decode_completions(tokenizer, completions)
    sampled = time.perf_counter()
    flat_prompts, flat = flatten_candidates(prompts, completions)
    scores = score_candidates(model, tokenizer, flat_prompts, [c.response_ids for c in flat], base=base,
                              batch_size=scoring_batch_size, chunk_tokens=chunk_tokens, hidden_at=hidden_at, progress=progress)
    log.info("sampling %.1f s, scoring %.1f s (%d candidates)", sampled - started, time.perf_counter() - sampled, len(flat))
    flags, bad, verdicts, graded = task.grade(judge, prompts, candidates, answers)
    ids = [[c.response_ids for c in row] for row in completions]
    return BestOfN(candidates, ids, scores.grouped(n), flags, bad, verdicts, graded)


def first_sample_block(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: list[str], answers: list, *,
                       task: Task, judge, sampling: SamplingConfig, seed: int, batch_size: int = 8,
                       progress: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """One sample per prompt from `model`, graded: the per-prompt flags (P,) of its `first`, and its length in tokens (P,)."""
    completions = sample_completions(model, tokenizer, prompts, n=1, sampling=sampling, batch_size=batch_size, seed=seed,
                                     progress=progress)
    flags, *_ = task.grade(judge, prompts, decode_completions(tokenizer, completions), answers)
    return flags[:, 0], torch.tensor([len(row[0].response_ids) for row in completions])


def latent_pick_block(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: list[str], answers: list, *,
                      task: Task, judge, n: int, sampling: SamplingConfig, seed: int, layer: int, batch_size: int = 8,
                      progress: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """The cheap path of one block (`attribution.latent`): (flags (P, N), latent_sim's pick (P,)), no scoring pass."""
    block = latent_block(model, tokenizer, prompts, n=n, layer=layer, sampling=sampling, seed=seed, batch_size=batch_size,
                         progress=progress)
    flags, *_ = task.grade(judge, prompts, decode_completions(tokenizer, block.completions), answers)
    return flags, block.chosen


def run_sharded(block: Callable, prompts: list[str], answers: list, *, rank: int, world_size: int, seed: int,
                batch_size: int, **kwargs) -> list:
    """`block(prompts, answers, seed=, batch_size=, **kwargs)` on this rank's contiguous run of whole
    batches (each seeded as one process would seed it); every rank gets all the blocks' results back,
    in order: the same as one process."""
    shard = batch_aligned_shard(len(prompts), batch_size, rank, world_size)
    part = block(prompts[shard.start : shard.stop], answers[shard.start : shard.stop], seed=batch_seed(seed, shard.start),
                 batch_size=batch_size, **kwargs) if len(shard) else None
    return [p for p in all_gather_objects(part, world_size) if p is not None]


def best_of_n_sharded(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: list[str], answers: list,
                      **kwargs) -> BestOfN:
    """`best_of_n_block` over all ranks' shards (`run_sharded`'s keywords, then the block's)."""
    return BestOfN.cat(run_sharded(partial(best_of_n_block, model, tokenizer), prompts, answers, **kwargs))

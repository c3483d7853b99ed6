"""The teacher stage: load the teacher (Hugging Face, or a vLLM engine under `generation.backend=vllm`),
sample its traces with the spec in context, and keep them in the resumable trace cache; then the judge's verdicts.

With several ranks (`trainer=ddp`, `fsdp`, SLURM) or several jobs (`traces.py slice=i slices=n`), each rank of each
job generates and judges its own slice of the prompts' batches (`data.traces.slice_batches`): rank r of a job given
slice i of n takes slice i + r n of n x world. The ranks of a run meet once all have done their slice."""

from __future__ import annotations

import gc
import logging
import time
from dataclasses import dataclass
from functools import partial

import datasets
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from lightning_da.data.filtering import judge_counts, judge_slice, judge_traces, judged_dir, verdicts
from lightning_da.data.prompts import prompts_fingerprint
from lightning_da.data.traces import TraceCache, generate_traces, slice_batches
from lightning_da.distributed import all_gather_objects, meeting_group
from lightning_da.errors import UserError
from lightning_da.generation import VLLMGenerator, batch_seed, check_backend, sample_chats

log = logging.getLogger(__name__)


def release_memory() -> None:
    """Return freed model memory (after the caller dropped its references) before the next model loads."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def trace_cache(cfg: DictConfig, spec, prompts) -> TraceCache:
    """The cache of the teacher's traces for `prompts` with `spec` in context, keyed by everything that determines
    them (nothing loads)."""
    return TraceCache(
        cfg.paths.cache_dir,
        {
            "teacher": instantiate(cfg.teacher.model).identity(),
            "prompts": prompts_fingerprint(prompts),
            "spec": spec.identity(),
            **spec.reads(prompts),
            "sampling": instantiate(cfg.teacher.sampling).as_dict(),
            "samples_per_prompt": cfg.teacher.samples_per_prompt,
            "demonstrations": OmegaConf.to_container(cfg.teacher.demonstrations),
            "seed": cfg.seed,
            # Engines sample differently from the same seed; hf keys stay as they were.
            **({"backend": cfg.generation.backend} if check_backend(cfg.generation) else {}),
        },
    )


def teacher_traces(cfg: DictConfig, spec, prompts, *, slice_index: int = 0, slices: int = 1, sends: bool = True,
                   load: bool | None = None):
    """(cache, traces): the teacher's traces for `prompts` with `spec` in context, generated, resumed or reused from
    the cache (`trace_cache`); with `slices`, only this slice's batches are generated, and the traces are None until
    every slice has run. The teacher loads only if the slice lacks a trace, or `load` says so (vLLM ranks build
    their engines together). `sends`: as `generate_traces`'s."""
    cache = trace_cache(cfg, spec, prompts)
    if cache.complete and not load:
        return cache, cache.dataset()
    if load is None:
        load = slice_lacks(cache, len(prompts), cfg.teacher.batch_size, slice_index, slices)
    if not load:
        done = cache.done_indices()
        if len(done) < len(prompts):
            return cache, None  # other slices still to run
        if not cache.complete:
            cache.mark_complete(len(prompts))  # a run stopped between its last shard and this mark
        return cache, cache.dataset()
    source, sampling = instantiate(cfg.teacher.model), instantiate(cfg.teacher.sampling)
    traces = generate_traces(cache, prompts, teacher_sampler(cfg, source, spec, sampling), batch_size=cfg.teacher.batch_size,
                             slice_index=slice_index, slices=slices, sends=sends)
    release_memory()
    return cache, traces


def slice_lacks(cache: TraceCache, n_prompts: int, batch_size: int, slice_index: int, slices: int) -> bool:
    """Whether a prompt of the slice has no trace in the cache yet."""
    done = cache.done_indices()
    return any(i not in done for batch in slice_batches(n_prompts, batch_size, slice_index, slices) for i in batch)


def teacher_sampler(cfg: DictConfig, source, spec, sampling):
    """`generate(rows, first_index) -> samples_per_prompt traces per row`, over the loaded teacher (the
    model lives as long as the closure)."""
    tokenizer = source.load_tokenizer()
    if check_backend(cfg.generation):
        engine = VLLMGenerator(source, instantiate(cfg.generation.vllm), cache_dir=cfg.paths.cache_dir, seed=cfg.seed)
        sample = partial(engine.sample_chats, tokenizer)
    else:
        model = source.load_model().eval()
        if getattr(source, "device_map", None) is None and torch.cuda.is_available():
            model = model.cuda()
        sample = partial(sample_chats, model, tokenizer)
    k = cfg.teacher.samples_per_prompt

    def generate(rows: list[dict], first_index: int) -> list[list[str]]:
        chats = [spec.teacher_chat(row, cfg.teacher.demonstrations) for row in rows]
        outputs = sample(chats, sampling, num_return_sequences=k, seed=batch_seed(cfg.seed, first_index))
        return [outputs[i : i + k] for i in range(0, len(outputs), k)]

    return generate


@dataclass
class Stage:
    """What one run of the teacher stage did (`seconds` and `traces_generated` over all its ranks) and left: the cache,
    and the judge's splits once the cache is complete (else None)."""

    cache: TraceCache
    splits: datasets.DatasetDict | None
    traces_generated: int
    seconds: float
    ranks: int

    def stats(self) -> dict:
        return {"ranks": self.ranks, "traces_generated": self.traces_generated, "seconds": round(self.seconds, 3),
                "traces_per_s": self.traces_generated / self.seconds if self.seconds else 0.0}


def teacher_stage(cfg: DictConfig, spec, prompts, judge, *, rank: int = 0, world: int = 1, slice_index: int = 0,
                  slices: int = 1) -> Stage:
    """This rank's slice (`slice_index` of `slices` for the job, split again over its `world` ranks) generated and
    judged; once every rank of the run has, the splits if the cache is then complete. A rank whose process dies ends
    the others' wait with an error (`meeting_group`); a rerun on any number of ranks or slices redoes only what no
    shard holds."""
    group = meeting_group(world)
    # Who generates: every rank, or each tensor-parallel group of vLLM ranks (its first sends the prompts, the others
    # join its engine's calls), or rank 0 alone for an HF teacher spread over the GPUs (device_map).
    size = teacher_group_size(cfg, world)
    index, count = slice_index + rank // size * slices, slices * (world // size)
    mine = [i for batch in slice_batches(len(prompts), cfg.teacher.batch_size, index, count) for i in batch]
    cache = trace_cache(cfg, spec, prompts)
    before, started, traces, load = cache.done_indices(), time.perf_counter(), None, None
    if check_backend(cfg.generation) and world > 1:
        # vLLM makes its engines' process groups with every rank: all build one if any slice lacks a trace.
        load = any(all_gather_objects(not cache.complete and slice_lacks(cache, len(prompts), cfg.teacher.batch_size, index,
                                                                         count), world, group=group))
    if rank % size == 0 or check_backend(cfg.generation):
        cache, traces = teacher_traces(cfg, spec, prompts, slice_index=index, slices=count, sends=rank % size == 0, load=load)
    seconds = time.perf_counter() - started
    generated = sum(i not in before for i in mine) * cfg.teacher.samples_per_prompt if rank % size == 0 else 0
    done = all_gather_objects((generated, seconds), world, group=group)  # the meeting: every slice generated
    # Every rank judges its share of the job's slice.
    judge_slice(cache, judge, n_prompts=len(prompts), batch_size=cfg.teacher.batch_size, slice_index=slice_index + rank * slices,
                slices=slices * world)
    if world > 1:
        torch.distributed.barrier(group=group)
    if traces is None and cache.complete:  # another rank completed it
        traces = cache.dataset()
    # Rank 0 builds the splits; the others then read them.
    splits = judge_traces(cache, traces, judge) if traces is not None and rank == 0 else None
    if world > 1:
        torch.distributed.barrier(group=group)
        if traces is not None and rank != 0:
            splits = judge_traces(cache, traces, judge)
    return Stage(cache, splits, sum(g for g, _ in done), max(s for _, s in done), world)


def teacher_group_size(cfg: DictConfig, world: int) -> int:
    """How many ranks share one teacher: vLLM's tensor-parallel group; every rank for an HF teacher whose weights
    span the GPUs (`device_map`); else 1."""
    if world == 1:
        return 1
    if check_backend(cfg.generation):
        size = cfg.generation.vllm.tensor_parallel_size
        if world % size:
            raise UserError(f"generation.vllm.tensor_parallel_size={size} must divide the {world} ranks (trainer.devices x "
                            "trainer.num_nodes): each group of that many ranks shares one teacher engine")
        return size
    return world if cfg.teacher.model.get("device_map") is not None else 1


def stage_summary(cfg: DictConfig, spec, prompts, judge, *, slice_index: int = 0, slices: int = 1) -> dict:
    """What the cache holds (loading no model): prompts, prompts generated (and this slice's), whether complete,
    traces judged, and the judge's split once built."""
    cache = trace_cache(cfg, spec, prompts)
    done = cache.done_indices()
    mine = [i for batch in slice_batches(len(prompts), cfg.teacher.batch_size, slice_index, slices) for i in batch]
    summary = {"cache": str(cache.dir), "prompts": len(prompts), "prompts_generated": len(done), "complete": cache.complete,
               "traces_judged": len(verdicts(cache, judge))}
    if slices > 1:
        summary.update(slice=slice_index, slices=slices, slice_prompts=len(mine), slice_generated=sum(i in done for i in mine))
    judged = judged_dir(cache, judge)
    if (judged / "dataset_dict.json").exists():
        summary.update(judge_counts(datasets.load_from_disk(str(judged))))
    return summary


def summary_line(summary: dict) -> str:
    """`stage_summary` (with a `Stage`'s `stats`, what this run did) as the one line the stage prints."""
    line = f"traces {summary['cache']}: {summary['prompts_generated']} of {summary['prompts']} prompts generated"
    if "slices" in summary:
        line += f" (slice {summary['slice']} of {summary['slices']}: {summary['slice_generated']} of {summary['slice_prompts']})"
    line += ", complete" if summary["complete"] else ", not complete"
    if "traces_kept" not in summary:
        line += f"; {summary['traces_judged']} traces judged so far"
    else:
        line += (f"; judged: kept {summary['traces_kept']}, rejected {summary['traces_rejected']} (unsafe "
                 f"{summary['traces_unsafe']}, unparsable {summary['traces_unparsable']})")
    if "ranks" in summary:
        line += (f"; this run: {summary['traces_generated']} traces in {summary['seconds']:.1f} s on {summary['ranks']} "
                 f"rank(s), {summary['traces_per_s']:.2f} traces/s")
    return line

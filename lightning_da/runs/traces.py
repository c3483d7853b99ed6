"""traces.py: the teacher stage alone: the teacher's traces for one slice of the prompts (or all), then, once the
cache holds every prompt, the judge's filter; `status=true` says what the cache holds.  `python traces.py --help`"""

from __future__ import annotations

import datasets
from hydra.utils import instantiate
from omegaconf import DictConfig

from lightning_da.data.filtering import judge_counts, judge_slice, judge_traces, judged_dir, verdicts
from lightning_da.data.traces import slice_batches
from lightning_da.errors import UserError, check_at_least
from lightning_da.teacher import teacher_traces, trace_cache


def summary(cache, n_prompts: int, judge, slice_index: int, slices: int, batch_size: int) -> str:
    """One line: the prompts with traces (and this slice's), whether complete, and the judge's split if it ran."""
    done = cache.done_indices()
    mine = [i for batch in slice_batches(n_prompts, batch_size, slice_index, slices) for i in batch]
    line = f"traces {cache.dir}: {len(done)} of {n_prompts} prompts generated"
    if slices > 1:
        line += f" (slice {slice_index} of {slices}: {sum(i in done for i in mine)} of {len(mine)})"
    line += ", complete" if cache.complete else ", not complete"
    judged = judged_dir(cache, judge)
    if not (judged / "dataset_dict.json").exists():
        return line + f"; {len(verdicts(cache, judge))} traces judged so far"
    counts = judge_counts(datasets.load_from_disk(str(judged)))
    return (line + f"; judged: kept {counts['traces_kept']}, rejected {counts['traces_rejected']} (unsafe {counts['traces_unsafe']}, "
            f"unparsable {counts['traces_unparsable']})")


def run_traces(cfg: DictConfig) -> str:
    """This slice's traces into the cache; the judge's filter once the cache is complete. Returns the summary line."""
    slices = check_at_least(cfg.slices, "slices")
    if not 0 <= cfg.slice < slices:
        raise UserError(f"slice={cfg.slice}: set 0 <= slice < slices={slices}")
    spec = instantiate(cfg.spec)
    prompts = instantiate(cfg.data).load(spec.categories)
    judge = instantiate(cfg.judge)
    judge.check()  # its weights load only when it judges
    if not cfg.status:
        cache, traces = teacher_traces(cfg, spec, prompts, slice_index=cfg.slice, slices=slices)
        # This slice's traces, whatever the other slices have done; the slice that completes the cache, the splits.
        judge_slice(cache, judge, n_prompts=len(prompts), batch_size=cfg.teacher.batch_size, slice_index=cfg.slice, slices=slices)
        if traces is not None:
            judge_traces(cache, traces, judge)
    line = summary(trace_cache(cfg, spec, prompts), len(prompts), judge, cfg.slice, slices, cfg.teacher.batch_size)
    print(line)
    return line

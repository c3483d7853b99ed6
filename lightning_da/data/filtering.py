"""Judge every teacher trace once; keep the safe ones, set the rest aside (both saved).

The verdicts go into shards of their own beside the traces (`verdicts/<judge-key>/`), written as they are made, so
a slice of the teacher stage judges its own traces, and a crash between generating and judging redoes only the
judging; once every trace has a verdict, the `kept` and `rejected` splits are saved (`judged/<judge-key>/`).
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path

import datasets
from tqdm.auto import tqdm

from lightning_da.atomic import save_dir_atomic, write_text_atomic
from lightning_da.data.traces import TraceCache, content_key, slice_batches
from lightning_da.judges.base import Judge

log = logging.getLogger(__name__)
JUDGE_BATCH = 64  # traces per verdict shard: what a crash can cost


def judged_dir(cache: TraceCache, judge: Judge, what: str = "judged") -> Path:
    """Where `judge`'s splits (`judged`) or verdict shards (`verdicts`) of this cache's traces are."""
    return cache.dir / what / content_key(judge.identity())


def verdicts(cache: TraceCache, judge: Judge) -> dict[tuple[int, int], dict]:
    """Every verdict written so far, by (prompt index, sample); the first shard holding one wins."""
    found: dict[tuple[int, int], dict] = {}
    for shard in sorted(judged_dir(cache, judge, "verdicts").glob("verdicts-*.jsonl")):
        for line in shard.read_text().splitlines():
            if line.strip():
                record = json.loads(line)
                found.setdefault((record["index"], record["sample"]), record)
    return found


def trace_rows(traces: datasets.Dataset) -> list[dict]:
    """The traces as rows with `index`, `sample` (0 where a dataset has none), `prompt` and `output`."""
    samples = traces["sample"] if "sample" in traces.column_names else [0] * len(traces)
    return [{"index": i, "sample": k, "prompt": p, "output": o}
            for i, k, p, o in zip(traces["index"], samples, traces["prompt"], traces["output"], strict=True)]


def judge_pending(cache: TraceCache, judge: Judge, rows: list[dict]) -> dict[tuple[int, int], dict]:
    """Verdicts for the trace rows (`trace_rows`) that have none yet, `JUDGE_BATCH` at a time, each batch a shard;
    returns every verdict the cache holds then (`verdicts`' mapping)."""
    have = verdicts(cache, judge)
    pending = [r for r in rows if (r["index"], r["sample"]) not in have]
    if not pending:
        return have
    target = judged_dir(cache, judge, "verdicts")
    with tqdm(total=len(pending), desc="judging traces", unit="trace") as bar:
        for start in range(0, len(pending), JUDGE_BATCH):
            batch = pending[start : start + JUDGE_BATCH]
            made = judge.judge([r["prompt"] for r in batch], [r["output"] for r in batch])
            records = [{"index": r["index"], "sample": r["sample"], "verdict": v.label, "verdict_category": v.category or "",
                        "judge_output": v.raw} for r, v in zip(batch, made, strict=True)]
            write_text_atomic(target / f"verdicts-{batch[0]['index']:06d}-{batch[0]['sample']:03d}.jsonl",
                              "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
            for record in records:
                have.setdefault((record["index"], record["sample"]), record)
            bar.update(len(batch))
    return have


def judge_slice(cache: TraceCache, judge: Judge, *, n_prompts: int, batch_size: int, slice_index: int, slices: int) -> None:
    """The verdicts of one slice's traces (`slice_batches`), those the cache holds and no verdict does yet."""
    if (judged_dir(cache, judge) / "dataset_dict.json").exists():
        return  # judged whole already (perhaps before verdicts were kept apart)
    mine = {i for batch in slice_batches(n_prompts, batch_size, slice_index, slices) for i in batch}
    judge_pending(cache, judge, [{"index": r["index"], "sample": k, "prompt": r["prompt"], "output": output}
                                 for r in cache.records() if r["index"] in mine for k, output in enumerate(r["outputs"])])


def judge_traces(cache: TraceCache, traces: datasets.Dataset, judge: Judge) -> datasets.DatasetDict:
    """`kept` (verdict safe) and `rejected` (unsafe or unparsable) splits, cached beside the traces; the traces judged
    already (a slice's, an interrupted run's) are not judged again."""
    target = judged_dir(cache, judge)
    if not (target / "dataset_dict.json").exists():
        rows = trace_rows(traces)
        found = judge_pending(cache, judge, rows)
        judged = [found[(r["index"], r["sample"])] for r in rows]
        labelled = traces.add_column("verdict", [r["verdict"] for r in judged])
        labelled = labelled.add_column("verdict_category", [r["verdict_category"] for r in judged])
        labelled = labelled.add_column("judge_output", [r["judge_output"] for r in judged])
        splits = datasets.DatasetDict(
            kept=labelled.filter(lambda v: v == "safe", input_columns="verdict"),
            rejected=labelled.filter(lambda v: v != "safe", input_columns="verdict"),
        )
        save_dir_atomic(target, splits.save_to_disk, replace=False)  # two slices completing at once: the first wins
    splits = datasets.load_from_disk(str(target))
    counts = judge_counts(splits)
    log.info("judge: kept %d, rejected %d (unsafe %d, unparsable %d) -> %s", counts["traces_kept"], counts["traces_rejected"],
             counts["traces_unsafe"], counts["traces_unparsable"], target)
    return splits


def judge_counts(splits: datasets.DatasetDict) -> dict[str, int]:
    counts = Counter(splits["rejected"]["verdict"])
    return {
        "traces_kept": len(splits["kept"]),
        "traces_rejected": len(splits["rejected"]),
        "traces_unsafe": counts["unsafe"],
        "traces_unparsable": counts["unparsable"],
    }

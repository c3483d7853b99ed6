"""Judge every teacher trace once; keep the safe ones, set the rest aside (both saved)."""

from __future__ import annotations

import logging
from collections import Counter

import datasets

from lightning_da.atomic import save_dir_atomic
from lightning_da.data.traces import TraceCache, content_key
from lightning_da.judges.base import Judge

log = logging.getLogger(__name__)


def judge_traces(cache: TraceCache, traces: datasets.Dataset, judge: Judge) -> datasets.DatasetDict:
    """`kept` (verdict safe) and `rejected` (unsafe or unparsable) splits, cached beside the traces."""
    target = cache.dir / "judged" / content_key(judge.identity())
    if not (target / "dataset_dict.json").exists():
        verdicts = judge.judge(traces["prompt"], traces["output"])
        labelled = traces.add_column("verdict", [v.label for v in verdicts])
        labelled = labelled.add_column("verdict_category", [v.category or "" for v in verdicts])
        labelled = labelled.add_column("judge_output", [v.raw for v in verdicts])
        splits = datasets.DatasetDict(
            kept=labelled.filter(lambda v: v == "safe", input_columns="verdict"),
            rejected=labelled.filter(lambda v: v != "safe", input_columns="verdict"),
        )
        save_dir_atomic(target, splits.save_to_disk, replace=False)  # two slices completing at once: the first wins
    splits = datasets.load_from_disk(str(target))
    counts = Counter(splits["rejected"]["verdict"])
    log.info(
        "judge: kept %d, rejected %d (unsafe %d, unparsable %d) -> %s",
        len(splits["kept"]), len(splits["rejected"]), counts["unsafe"], counts["unparsable"], target,
    )
    return splits


def judge_counts(splits: datasets.DatasetDict) -> dict[str, int]:
    counts = Counter(splits["rejected"]["verdict"])
    return {
        "traces_kept": len(splits["kept"]),
        "traces_rejected": len(splits["rejected"]),
        "traces_unsafe": counts["unsafe"],
        "traces_unparsable": counts["unparsable"],
    }

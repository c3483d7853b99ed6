"""Teacher traces: generated in atomic shards under a content-hashed key, so a killed run resumes.

Layout of one cache entry (`<cache_dir>/traces/<key>/`):
    key.json              what the key was computed from (teacher, prompts, spec, sampling)
    shard-000000.jsonl    one file per generated batch, written to a temp name and renamed
    complete              present once every prompt has a trace
    verdicts/<judge-key>/ the judge's verdicts, a shard per batch of traces judged (`data.filtering`)
    judged/<judge-key>/   the judge's kept/rejected splits (a `datasets.DatasetDict` on disk)
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from pathlib import Path

import datasets
from tqdm.auto import tqdm

from lightning_da.atomic import write_text_atomic

log = logging.getLogger(__name__)


def content_key(payload) -> str:
    """A stable short hash of JSON-serialisable content."""
    blob = json.dumps(payload, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


class TraceCache:
    """Shards of `{"index", "prompt", "categories", "outputs"}` records (one per prompt) for one key."""

    def __init__(self, root: str | Path, key_payload: dict):
        self.key = content_key(key_payload)
        self.dir = Path(root) / "traces" / self.key
        self.dir.mkdir(parents=True, exist_ok=True)
        key_file = self.dir / "key.json"
        if not key_file.exists():
            write_text_atomic(key_file, json.dumps(key_payload, indent=2, sort_keys=True, default=str))

    @property
    def shards(self) -> list[Path]:
        return sorted(self.dir.glob("shard-*.jsonl"))

    @property
    def complete(self) -> bool:
        return (self.dir / "complete").exists()

    def records(self) -> list[dict]:
        """One record per prompt index. Two jobs resuming the same key at once (a sweep sharing a
        teacher) may both write a prompt; the first shard holding it wins."""
        by_index: dict[int, dict] = {}
        for shard in self.shards:
            with shard.open() as handle:
                for line in handle:
                    if line.strip():
                        record = json.loads(line)
                        by_index.setdefault(record["index"], record)
        return [by_index[i] for i in sorted(by_index)]

    def done_indices(self) -> set[int]:
        return {r["index"] for r in self.records()}

    def write_shard(self, records: list[dict]) -> None:
        first = min(r["index"] for r in records)
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
        write_text_atomic(self.dir / f"shard-{first:06d}.jsonl", text)

    def mark_complete(self, expected: int) -> None:
        done = self.done_indices()
        if len(done) != expected:
            raise RuntimeError(f"trace cache {self.dir}: {len(done)} of {expected} prompts have traces")
        write_text_atomic(self.dir / "complete", f"{expected}\n")

    def dataset(self) -> datasets.Dataset:
        """One row per trace: `index` (the prompt's), `sample`, `prompt`, `categories`, `output`."""
        rows = [
            {"index": r["index"], "sample": k, "prompt": r["prompt"], "categories": r["categories"], "output": output}
            for r in self.records()
            for k, output in enumerate(r["outputs"])
        ]
        return datasets.Dataset.from_list(rows)


def slice_batches(n_prompts: int, batch_size: int, slice_index: int = 0, slices: int = 1) -> list[range]:
    """The prompts' fixed batches (batch k: prompts k x batch_size onward, seeded by its first index), and of them the
    slice's: every `slices`-th from `slice_index`. Fixed by (prompt index, batch size), so the traces are the same
    whatever the number of slices, and a resume on any number redoes only the batches no shard holds."""
    batches = [range(start, min(start + batch_size, n_prompts)) for start in range(0, n_prompts, batch_size)]
    return batches[slice_index::slices]


def generate_traces(
    cache: TraceCache,
    prompts: datasets.Dataset,
    generate: Callable[[list[dict], int], list[list[str]]],
    *,
    batch_size: int,
    slice_index: int = 0,
    slices: int = 1,
    sends: bool = True,
) -> datasets.Dataset | None:
    """Fill `cache` with one trace per prompt of this slice (`slice_batches`; all of them by default), skipping
    prompts that already have one. The cache is marked complete once every prompt of every slice has its trace; then
    the traces, else None (other slices still to run).

    `generate(rows, first_index)` returns the outputs (one or more samples) of each row; it is
    seeded by the batch's first index so a resumed batch samples what the interrupted one would have.
    `sends=False`: a member of a tensor-parallel group other than its first, whose engine is the group's: it calls
    `generate` with no rows once for each of the slice's batches (the engine's collectives), and writes nothing.
    """
    if cache.complete:
        log.info("teacher traces: all %d cached in %s", len(prompts), cache.dir)
        return cache.dataset()
    done = cache.done_indices()
    batches = slice_batches(len(prompts), batch_size, slice_index, slices)
    todo = [missing for batch in batches if (missing := [i for i in batch if i not in done])]
    if done:
        log.info("teacher traces: resuming, %d of %d already in %s", len(done), len(prompts), cache.dir)
    if not sends:
        for indices in todo:
            generate([], indices[0])
        return None
    where = f" (slice {slice_index} of {slices})" if slices > 1 else ""
    _write_batches(cache, prompts, generate, todo, total=sum(map(len, batches)), desc=f"teacher traces{where}")
    if len(cache.done_indices()) < len(prompts):
        return None
    cache.mark_complete(len(prompts))
    return cache.dataset()


def _write_batches(cache: TraceCache, prompts: datasets.Dataset, generate, todo: list[list[int]], *, total: int, desc: str) -> None:
    """Each batch of prompt indices in `todo` generated and written as a shard, under a bar of the slice's prompts
    with the traces/s of this run."""
    made = 0
    with tqdm(total=total, initial=total - sum(map(len, todo)), desc=desc, unit="prompt") as bar:
        for indices in todo:
            rows = [prompts[i] for i in indices]
            outputs = generate(rows, indices[0])
            cache.write_shard([{"index": i, "prompt": row["prompt"], "categories": list(row["categories"]), "outputs": list(samples)}
                               for i, row, samples in zip(indices, rows, outputs, strict=True)])
            bar.update(len(indices))
            made += sum(map(len, outputs))
            bar.set_postfix_str(f"{made / max(bar.format_dict['elapsed'], 1e-9):.2f} traces/s")

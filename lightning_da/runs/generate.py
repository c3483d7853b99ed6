"""generate.py: latent Best-of-N for deployment on a file of prompts (or any benchmark's), resumable.
`python generate.py --help`"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from lightning_da.atomic import keyed_parts_dir, write_text_atomic
from lightning_da.data.traces import content_key
from lightning_da.errors import check_at_least
from lightning_da.generation import batch_seed
from lightning_da.latent_best_of_n import LatentBestOfN

log = logging.getLogger(__name__)

def run_generate(cfg: DictConfig) -> list[dict]:
    """generate.py: latent Best-of-N on the benchmark's prompts (or a file of yours: benchmark=file
    benchmark.path=...), written to <run>/generations.jsonl, one line per prompt.

    Each batch of prompts is written as it finishes, whole or not at all, to <run>/generations.parts/
    (with key.json: the prompts and settings). Run again with the same `hydra.run.dir` after a crash
    and the batches done are kept (each batch seeded by its position: the output is the same)."""
    for key in ("n_candidates", "batch_size"):
        check_at_least(cfg[key], key)
    check_at_least(cfg.max_new_tokens, "max_new_tokens", optional=True)
    prompts = [row["prompt"] for row in instantiate(cfg.benchmark).load()]
    bon = LatentBestOfN.from_config(cfg)
    run = Path(cfg.paths.output_dir)
    parts = keyed_parts_dir(run / "generations.parts", {
        "prompts": content_key(prompts), "student": OmegaConf.to_container(cfg.student, resolve=True), "adapter": cfg.adapter,
        "base": OmegaConf.to_container(cfg.base, resolve=True) if cfg.base else None, "backend": cfg.generation.backend,
        "layer": bon.layer, "n": bon.n, "sampling": bon.sampling.as_dict(), "seed": cfg.seed, "batch_size": bon.batch_size,
    })
    starts = range(0, len(prompts), bon.batch_size)
    todo = [start for start in starts if not (parts / f"block-{start:06d}.jsonl").exists()]
    if len(todo) < len(starts):
        log.info("resuming: %d of %d batches already in %s", len(starts) - len(todo), len(starts), parts)
    for start in tqdm(todo, desc="latent best-of-n", unit="batch"):
        block = bon.generate(prompts[start : start + bon.batch_size], seed=batch_seed(cfg.seed, start), progress=False)
        write_text_atomic(parts / f"block-{start:06d}.jsonl", "".join(json.dumps(p.as_dict()) + "\n" for p in block))
    text = "".join((parts / f"block-{start:06d}.jsonl").read_text() for start in starts)
    out = run / "generations.jsonl"
    write_text_atomic(out, text)
    shutil.rmtree(parts)
    picks = [json.loads(line) for line in text.splitlines()]
    truncated = sum(p["truncated"][p["index"]] for p in picks)
    print(f"{len(picks)} prompts x {bon.n} candidates, chosen by latent similarity at layer {bon.layer} "
          f"({truncated} chosen responses cut by max_new_tokens): {out}")
    first = picks[0]
    print(f"e.g. {first['prompt'][:100]!r}\n  cosines {[round(c, 4) for c in first['cosines']]}, "
          f"chose {first['index']}: {first['response'][:200]!r}")
    return picks

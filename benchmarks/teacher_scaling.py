"""The teacher stage on one process against the same stage on 2 gloo ranks, measured in one run.

    .venv/bin/python benchmarks/teacher_scaling.py [--prompts 48 --batch-size 4 --max-new-tokens 64 --ranks 2]

The embedded SmolLM2-135M-Instruct teacher answers the same StrongREJECT prompts (sampled, T 0.7) with the spec in
context, through `traces.py`, each way in a fresh process tree and a fresh trace cache:

  1 process   trainer=cpu: one process generates every batch (torch's threads: every core)
  N ranks     trainer=ddp trainer.accelerator=cpu trainer.devices=N: each rank its own slice of the batches
              (Lightning gives each rank cores / N threads)
  1 rank's    trainer=cpu with the threads of one of the N ranks (OMP_NUM_THREADS): the N ranks' throughput over N
  share       times this is the stage's scaling efficiency with each rank's resources fixed, as on a GPU per rank

Each way's traces/s is its generated traces over the stage's time (the slowest rank's, model loading included,
process start-up not), read from the traces.json the job writes; the wall time of the whole command is printed
beside it. Then the records of both caches are compared: the same prompts, the same text, each prompt once.

Target: a ratio near N where the cores allow it (here 2 cores, so at most about 2), and the same records always.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_MODE", "offline")


def run(name: str, work: Path, args: argparse.Namespace, *trainer: str, env: dict | None = None) -> tuple[dict, float, list[dict]]:
    """traces.py on the fixed prompt set with `trainer`: (its traces.json, the command's wall seconds, the records)."""
    argv = [sys.executable, "traces.py", f"data.limit={args.prompts}", f"teacher.batch_size={args.batch_size}",
            f"teacher.sampling.max_new_tokens={args.max_new_tokens}", "teacher.sampling.do_sample=true",
            "+teacher.sampling.temperature=0.7", "logger=csv", f"paths.cache_dir={work / name / 'cache'}",
            f"hydra.run.dir={work / name / 'run'}", *trainer]
    started = time.perf_counter()
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, env={**os.environ, **(env or {})})
    wall = time.perf_counter() - started
    if done.returncode != 0:
        sys.exit(f"{name}: traces.py failed:\n{done.stderr[-3000:]}")
    [cache] = (work / name / "cache" / "traces").iterdir()
    records = [json.loads(line) for shard in sorted(cache.glob("shard-*.jsonl")) for line in shard.read_text().splitlines()]
    return json.loads((work / name / "run" / "traces.json").read_text()), wall, records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=48)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--ranks", type=int, default=2)
    args = parser.parse_args()
    print(f"teacher stage: SmolLM2-135M-Instruct, {args.prompts} StrongREJECT prompts in batches of {args.batch_size}, "
          f"{args.max_new_tokens} new tokens, sampled; {os.cpu_count()} cores")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        one, one_wall, one_records = run("one", work, args, "trainer=cpu")
        many, many_wall, many_records = run("ranks", work, args, "trainer=ddp", "trainer.accelerator=cpu",
                                            f"trainer.devices={args.ranks}")
        threads = str(max(1, (os.cpu_count() or 1) // args.ranks))
        share, share_wall, share_records = run("share", work, args, "trainer=cpu", env={"OMP_NUM_THREADS": threads})
    rows = (("1 process", one, one_wall), (f"{args.ranks} gloo ranks", many, many_wall), (f"1 rank's share ({threads} thr)", share, share_wall))
    for name, stats, wall in rows:
        print(f"{name:>21}: {stats['traces_generated']} traces in {stats['seconds']:.1f} s, {stats['traces_per_s']:.2f} traces/s "
              f"(the command: {wall:.1f} s)")
    print(f"ratio ({args.ranks} ranks / 1 process): {many['traces_per_s'] / one['traces_per_s']:.2f}x traces/s, "
          f"{one_wall / many_wall:.2f}x the command's wall time")
    print(f"scaling efficiency ({args.ranks} ranks / {args.ranks} x one rank's share): "
          f"{many['traces_per_s'] / (args.ranks * share['traces_per_s']):.2f}")
    indices = sorted(r["index"] for r in many_records)
    by_index = [sorted(records, key=lambda r: r["index"]) for records in (one_records, many_records, share_records)]
    same = by_index[0] == by_index[1] == by_index[2]
    print(f"records: {'the same' if same else 'DIFFERENT'} all three ways ({len(one_records)} prompts; the ranks' each "
          f"once: {indices == list(range(args.prompts))})")
    if not same:
        sys.exit(1)


if __name__ == "__main__":
    main()
